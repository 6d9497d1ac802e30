# sipws: `make run` starts the proxy on its built-in defaults; `make test`
# installs everything the tests need (system packages when run as root, npm
# packages) and runs the whole suite.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# Third-party peers the interop tests start themselves.
APT_PACKAGES := kamailio kamailio-websocket-modules kamailio-tls-modules \
	kamailio-utils-modules sip-tester sngrep tshark openssl chromium systemd \
	haproxy nginx
APT_STAMP := $(VENV)/.apt-installed
NODE_DIR := tests/interop/js
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# Whole-suite limit (seconds): a hang fails instead of eating CI time.
SUITE_TIMEOUT ?= 1500
PYTEST_ARGS ?=
CONFIG ?=

.PHONY: run test unit integration interop bench lint clean venv system-deps node-deps phone-deps

venv: $(STAMP)

# Editable install in setuptools' supported "lenient" mode (its default, named
# here so a change of default cannot break us): with package-dir {"" = "."} it
# writes a static .pth holding the project root, so Twisted's plugin scan finds
# twisted/plugins/sipws_plugin.py in the source tree (docs/install.md).
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --config-settings editable_mode=lenient -e '.[test]'
	touch $@

# The example phone page's one dependency (SIP.js, pinned in its package.json),
# loaded by the page as ES modules straight from examples/phone/node_modules.
PHONE_DIR := examples/phone
PHONE_STAMP := $(PHONE_DIR)/node_modules/.installed

phone-deps: $(PHONE_STAMP)

$(PHONE_STAMP): $(PHONE_DIR)/package.json $(PHONE_DIR)/package-lock.json
	cd $(PHONE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The sipws command (= twistd -n --pidfile= sipws): exits 0 after a clean
# shutdown on SIGTERM or Ctrl-C.  No shell metacharacters in the recipe, so make
# runs sipws itself (no /bin/sh in between to swallow or mangle signals).
run: $(STAMP) $(PHONE_STAMP)
	$(VENV)/bin/sipws --config $(or $(CONFIG),examples/phone/sipws.toml)

system-deps: $(APT_STAMP)

# Installs the peers when run as root; otherwise only checks they are there
# (the tests then fail naming what is missing).  haproxy and nginx, when this
# installs them, may start as system services (nginx on port 80); the tests run
# their own processes with their own files, so those services are stopped and
# disabled again (an haproxy or nginx installed before is left alone).
$(APT_STAMP): Makefile | $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
				|| exit 1; \
			for s in haproxy nginx; do \
				case " $$missing " in *" $$s "*) \
					if [ -d /run/systemd/system ]; then systemctl disable --now $$s >/dev/null 2>&1 || true; \
					elif [ -x /etc/init.d/$$s ]; then /etc/init.d/$$s stop >/dev/null 2>&1 || true; fi; \
					echo "$$s: its system service (if the package started one) stopped and disabled: the tests run their own";; \
				esac; \
			done; \
		else \
			echo "not root: cannot install$$missing (tests needing them will fail)"; exit 0; \
		fi; \
	fi
	touch $@

node-deps: $(NODE_STAMP)

# PUPPETEER_SKIP_DOWNLOAD: puppeteer-core drives Debian's /usr/bin/chromium; nothing
# may try to download a browser build (no network but the package registries).
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error
	touch $@

test: $(STAMP) $(APT_STAMP) $(NODE_STAMP) $(PHONE_STAMP)
	timeout --signal=TERM --kill-after=30 $(SUITE_TIMEOUT) $(VENV)/bin/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

interop: $(STAMP) $(APT_STAMP) $(NODE_STAMP)
	$(VENV)/bin/pytest tests/interop $(PYTEST_ARGS)

# The comparative benchmarks (each prints its ratio to a reference). The long
# reliability runs are separate: bench/soak.py (60 min by default),
# bench/fuzz.py (1,000,000 inputs per target), bench/floods.py, bench/faults.py.
BENCHMARKS := sip_parse proxy_core trace_hep udp_icmp ws_handshake handshakes ws_keepalive ws_memory relay compression

bench: $(STAMP)
	@for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules build *.egg-info
