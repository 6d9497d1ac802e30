// The sipws example phone: register, send MESSAGEs, place and answer audio calls.
//
// SIP.js 0.21 ships ES modules with relative imports, so the page imports them
// straight from node_modules (installed from npm by `make phone-deps`); no bundler,
// no CDN.  Everything the page knows is kept in `window.phone` and mirrored in
// data-* attributes (body and #status: data-transport, data-registration,
// data-call), so people, scripts and tests read the same state.

import {
  Inviter,
  Messager,
  Registerer,
  RegistererState,
  SessionState,
  UserAgent,
} from "./node_modules/sip.js/lib/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
/** Seconds a registration lasts (sipws's [registrar] bounds apply). */
const REGISTER_EXPIRES = 600;
/** Longest wait for ICE candidates before an offer/answer is sent, ms. */
const ICE_GATHERING_TIMEOUT_MS = 2000;
/** Most log lines kept on the page. */
const MAX_LOG_LINES = 500;
const AUDIO_ONLY = { constraints: { audio: true, video: false } };

/** The state of the page, for people (rendered) and scripts (read it, do not write it). */
const phone = {
  /** WebSocket transport: idle | connecting | connected | disconnected */
  state: "idle",
  registered: false,
  /** unregistered | registering | registered | failed */
  registration: "unregistered",
  /** Last registration failure, e.g. "403 Forbidden" or the transport error. */
  registrationError: "",
  /** {direction: "in"|"out", peer, body, status} in order; status of "out": sending | "200 OK" | failure */
  messages: [],
  /** state: idle | calling | ringing | incoming | established | ended; direction, peer, endedBy, reason, ice */
  call: { state: "idle" },
  /** The current (or last) call's RTCPeerConnection, null before the first call. */
  pc: null,
  log: [],
  ua: null,
  registerer: null,
  session: null,
};
window.phone = phone;

// ---------------------------------------------------------------- helpers

function log(text) {
  const line = `${new Date().toISOString().slice(11, 23)} ${text}`;
  phone.log.push(line);
  if (phone.log.length > MAX_LOG_LINES) phone.log.shift();
  const box = $("log");
  box.textContent = phone.log.join("\n");
  box.scrollTop = box.scrollHeight;
  console.info(`phone: ${text}`);
}

function defaultServer() {
  if (location.protocol === "https:" || location.protocol === "http:") {
    // The page's own host: sipws serves the page ([http] document_root) and its WebSocket.
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  }
  return "ws://127.0.0.1:8080/";
}

/** "bob" -> sip:bob@DOMAIN; "bob@example.com" -> sip:bob@example.com; a sip: URI as it is. */
function targetUri(text) {
  const value = text.trim();
  if (!value) return undefined;
  if (/^sips?:/i.test(value)) return UserAgent.makeURI(value);
  if (value.includes("@")) return UserAgent.makeURI(`sip:${value}`);
  return UserAgent.makeURI(`sip:${value}@${$("domain").value.trim()}`);
}

function render() {
  const call = phone.call;
  for (const element of [document.body, $("status")]) {
    element.dataset.transport = phone.state;
    element.dataset.registration = phone.registration;
    element.dataset.call = call.state;
  }
  let status = { idle: "not connected", connecting: "connecting…", connected: "connected",
    disconnected: "disconnected" }[phone.state];
  if (phone.registration === "registered") status = `registered as ${phone.ua.configuration.uri}`;
  else if (phone.registration === "registering") status = "registering…";
  else if (phone.registration === "failed") status = `registration failed: ${phone.registrationError}`;
  $("status").textContent = status;

  const live = call.state !== "idle" && call.state !== "ended";
  $("call-state").dataset.state = call.state;
  $("call-state").textContent = call.state === "idle" ? "no call"
    : `${call.state} (${call.direction === "in" ? "from" : "to"} ${call.peer})${call.reason ? `: ${call.reason}` : ""}`;
  $("register").disabled = phone.state === "connecting" || phone.registration === "registering";
  $("unregister").disabled = !phone.ua;
  $("send").disabled = !phone.registered;
  $("call").disabled = !phone.registered || live;
  $("answer").disabled = call.state !== "incoming";
  $("hangup").disabled = !live;

  const list = $("messages");
  while (list.children.length < phone.messages.length) list.appendChild(document.createElement("li"));
  phone.messages.forEach((message, index) => {
    const item = list.children[index];
    item.dataset.direction = message.direction;
    item.dataset.status = message.status;
    item.textContent = `${message.peer}: ${message.body}` + (message.direction === "out" ? ` [${message.status}]` : "");
  });
}

function setCall(state, extra = {}) {
  Object.assign(phone.call, extra, { state });
  log(`call ${state}${extra.reason ? `: ${extra.reason}` : ""}`);
  render();
}

// ---------------------------------------------------------------- registration

async function register() {
  const user = $("user").value.trim();
  const domain = $("domain").value.trim();
  const server = $("server").value.trim();
  const uri = UserAgent.makeURI(`sip:${user}@${domain}`);
  if (!user || !uri) {
    log(`not a usable address: sip:${user}@${domain}`);
    return;
  }
  if (phone.ua) await stop();
  const ua = new UserAgent({
    uri,
    displayName: user,
    transportOptions: { server },
    // No STUN server: the page talks to peers on the same machine or network.
    sessionDescriptionHandlerFactoryOptions: {
      peerConnectionConfiguration: { iceServers: [] },
      iceGatheringTimeout: ICE_GATHERING_TIMEOUT_MS,
    },
    logLevel: "warn",
    delegate: {
      onConnect: () => {
        phone.state = "connected";
        log(`connected to ${server}`);
        render();
        // After a reconnection the registration is gone with the old connection.
        if (phone.registerer && phone.registration !== "registering" && ua === phone.ua) sendRegister();
      },
      onDisconnect: (error) => {
        phone.state = "disconnected";
        phone.registered = false;
        if (phone.registration === "registered") phone.registration = "unregistered";
        log(`disconnected${error ? `: ${error.message}` : ""}`);
        render();
      },
      onInvite: incoming,
      onMessage: (message) => {
        const request = message.request;
        message.accept().catch((e) => log(`answering MESSAGE failed: ${e.message}`));
        phone.messages.push({ direction: "in", peer: request.from.uri.toString(), body: request.body, status: "received" });
        log(`MESSAGE from ${request.from.uri}: ${request.body}`);
        render();
      },
    },
  });
  phone.ua = ua;
  phone.state = "connecting";
  phone.registration = "registering";
  phone.registrationError = "";
  log(`connecting to ${server} as ${uri}`);
  render();
  try {
    await ua.start();
  } catch (error) {
    if (ua !== phone.ua) return;
    phone.state = "disconnected";
    phone.registration = "failed";
    phone.registrationError = `cannot connect to ${server}: ${error.message}`;
    log(phone.registrationError);
    render();
    return;
  }
  phone.state = "connected";
  phone.registerer = new Registerer(ua, { expires: REGISTER_EXPIRES });
  phone.registerer.stateChange.addListener((state) => {
    phone.registered = state === RegistererState.Registered;
    if (phone.registered) phone.registration = "registered";
    else if (phone.registration === "registered") phone.registration = "unregistered";
    log(`registration ${state}`);
    render();
  });
  await sendRegister();
}

async function sendRegister() {
  const registerer = phone.registerer;
  phone.registration = "registering";
  render();
  try {
    await registerer.register({
      requestDelegate: {
        onReject: (response) => {
          const message = response.message;
          phone.registration = "failed";
          phone.registrationError = `${message.statusCode} ${message.reasonPhrase}`;
          log(`REGISTER rejected: ${phone.registrationError}`);
          render();
        },
      },
    });
  } catch (error) {
    phone.registration = "failed";
    phone.registrationError = error.message;
    log(`REGISTER failed: ${error.message}`);
    render();
  }
}

/** Unregisters (when registered) and closes the connection. */
async function stop() {
  const { ua, registerer } = phone;
  phone.ua = null;
  phone.registerer = null;
  if (phone.session) hangup();
  try {
    if (registerer && registerer.state === RegistererState.Registered) await registerer.unregister();
  } catch (error) {
    log(`unregister failed: ${error.message}`);
  }
  try {
    if (ua) await ua.stop();
  } catch (error) {
    log(`stop failed: ${error.message}`);
  }
  phone.state = "idle";
  phone.registered = false;
  phone.registration = "unregistered";
  log("stopped");
  render();
}

// ---------------------------------------------------------------- messages

function sendMessage() {
  const uri = targetUri($("target").value);
  const body = $("text").value;
  if (!uri) {
    log(`not a usable target: ${$("target").value}`);
    return;
  }
  const entry = { direction: "out", peer: uri.toString(), body, status: "sending" };
  phone.messages.push(entry);
  render();
  const settle = (status) => {
    entry.status = status;
    log(`MESSAGE to ${entry.peer}: ${status}`);
    render();
  };
  new Messager(phone.ua, uri, body, "text/plain")
    .message({
      requestDelegate: {
        onAccept: (response) => settle(`${response.message.statusCode} ${response.message.reasonPhrase}`),
        onReject: (response) => settle(`${response.message.statusCode} ${response.message.reasonPhrase}`),
      },
    })
    .catch((error) => settle(`failed: ${error.message}`));
}

// ---------------------------------------------------------------- calls

function watch(session, direction, peer) {
  phone.session = session;
  phone.pc = null;
  phone.call = { state: "idle", direction, peer, endedBy: "", reason: "", ice: "new" };
  session.stateChange.addListener((state) => {
    if (session !== phone.session) return;
    grabPeerConnection(session);
    if (state === SessionState.Established) {
      const handler = session.sessionDescriptionHandler;
      const audio = $("remote-audio");
      audio.srcObject = handler.remoteMediaStream;
      audio.play().catch((error) => log(`audio: ${error.message}`));
      setCall("established");
    } else if (state === SessionState.Terminated) {
      if (!phone.call.endedBy) phone.call.endedBy = "remote";
      $("remote-audio").srcObject = null;
      setCall("ended", { reason: phone.call.reason || `hung up by ${phone.call.endedBy}` });
    }
  });
}

/** Keeps the call's RTCPeerConnection in phone.pc and its ICE state in phone.call.ice. */
function grabPeerConnection(session) {
  const pc = session.sessionDescriptionHandler && session.sessionDescriptionHandler.peerConnection;
  if (!pc || pc === phone.pc) return;
  phone.pc = pc;
  const update = () => {
    if (phone.pc !== pc) return;
    phone.call.ice = pc.iceConnectionState;
    log(`ICE ${pc.iceConnectionState}`);
    render();
  };
  pc.addEventListener("iceconnectionstatechange", update);
  update();
}

function call() {
  const uri = targetUri($("target").value);
  if (!uri) {
    log(`not a usable target: ${$("target").value}`);
    return;
  }
  const inviter = new Inviter(phone.ua, uri, { sessionDescriptionHandlerOptions: AUDIO_ONLY });
  watch(inviter, "out", uri.toString());
  setCall("calling");
  inviter
    .invite({
      requestDelegate: {
        onProgress: (response) => {
          const message = response.message;
          if (message.statusCode === 180 || message.statusCode === 183) setCall("ringing");
          grabPeerConnection(inviter);
        },
        onReject: (response) => {
          phone.call.reason = `${response.message.statusCode} ${response.message.reasonPhrase}`;
          phone.call.endedBy = "remote";
        },
      },
    })
    .then(() => grabPeerConnection(inviter))
    .catch((error) => {
      phone.call.reason = error.message;
      log(`call failed: ${error.message}`);
    });
}

function incoming(invitation) {
  if (phone.session && phone.call.state !== "ended") {
    invitation.reject({ statusCode: 486 }).catch(() => {});
    log(`busy: refused a call from ${invitation.remoteIdentity.uri}`);
    return;
  }
  watch(invitation, "in", invitation.remoteIdentity.uri.toString());
  setCall("incoming");
}

function answer() {
  const invitation = phone.session;
  if (!invitation || phone.call.state !== "incoming") return;
  invitation
    .accept({ sessionDescriptionHandlerOptions: AUDIO_ONLY })
    .then(() => grabPeerConnection(invitation))
    .catch((error) => log(`answer failed: ${error.message}`));
}

function hangup() {
  const session = phone.session;
  if (!session) return;
  phone.call.endedBy = "local";
  const failed = (error) => log(`hang up failed: ${error.message}`);
  switch (session.state) {
    case SessionState.Initial:
    case SessionState.Establishing:
      if (session instanceof Inviter) session.cancel().catch(failed);
      else session.reject().catch(failed);
      break;
    case SessionState.Established:
      session.bye().catch(failed);
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------- wiring

$("user").value = params.get("user") || "";
$("domain").value = params.get("domain") || location.hostname || "sipws.invalid";
$("server").value = params.get("server") || defaultServer();
$("register").addEventListener("click", () => { register(); });
$("unregister").addEventListener("click", () => { stop(); });
$("send").addEventListener("click", sendMessage);
$("call").addEventListener("click", call);
$("answer").addEventListener("click", answer);
$("hangup").addEventListener("click", hangup);
$("text").addEventListener("keydown", (event) => { if (event.key === "Enter" && !$("send").disabled) sendMessage(); });
window.addEventListener("pagehide", () => { if (phone.ua) phone.ua.stop(); });
render();
log("ready");
