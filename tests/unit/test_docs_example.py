"""The example configuration in docs/configuration.md stays valid."""

import re
import tomllib
from pathlib import Path

from sipws.config import config_from_dict

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_documented_example_configuration_is_accepted(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/configuration.md lost its example"
    for block in blocks:
        data = tomllib.loads(block)
        for section in data.values():  # file paths must exist for the check: point them at temp files
            for key in ("certificate", "private_key", "ca_list"):
                if key in section:
                    path = tmp_path / Path(section[key]).name
                    path.write_text("placeholder")
                    section[key] = str(path)
        config = config_from_dict(data)
        assert config.ws.listen
