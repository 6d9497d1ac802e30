// A JsSIP user agent driven by the Python tests: JSON commands on stdin,
// JSON events on stdout (one object per line).
//
//   node ua.js --ws ws://127.0.0.1:PORT --uri sip:alice@example.com [--answer auto|ring|none]
//              [--sockets '[{"url":URL,"weight":N},...]']  (JsSIP's weighted sockets, instead of --ws)
//              [--local 127.0.0.X]    (the local address the WebSocket connects from)
//              [--recovery MIN,MAX]   (JsSIP's reconnect delay in seconds; default 600,600 = none in a test)
//              [--autoregister]       (register on each connect, as a browser phone does: JsSIP
//                                      re-registers by itself after it reconnects)
//              [--header 'Name: value'] (an extra handshake header; repeatable)
//
// Commands: {"cmd":"register"} {"cmd":"message","target":URI,"body":TEXT}
//           {"cmd":"call","target":URI}  {"cmd":"hangup"}  (BYE, or CANCEL while ringing)
//           {"cmd":"calls","target":URI,"count":N,"concurrency":C,"hold_ms":MS}
//           {"cmd":"drop"}  (close the WebSocket without unregistering)
//           {"cmd":"stop"}
// Node has no WebRTC: a stand-in RTCPeerConnection produces and accepts SDP,
// so calls complete at the SIP level (which is what a SIP proxy carries).
'use strict';
const readline = require('readline');
const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');

const SDP = 'v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n' +
  'm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n';

class StandInPeerConnection {
  constructor() {
    this.signalingState = 'stable'; this.iceGatheringState = 'new';
    this.iceConnectionState = 'new'; this.connectionState = 'new';
    this.localDescription = null; this.remoteDescription = null; this._listeners = {};
  }
  addEventListener(ev, fn) { (this._listeners[ev] = this._listeners[ev] || []).push(fn); }
  removeEventListener() {}
  _emit(ev, arg) { (this._listeners[ev] || []).forEach((f) => f(arg)); if (this['on' + ev]) this['on' + ev](arg); }
  addTrack() { return {}; } getSenders() { return []; } getReceivers() { return []; } getTransceivers() { return []; }
  async createOffer() { return { type: 'offer', sdp: SDP }; }
  async createAnswer() { return { type: 'answer', sdp: SDP }; }
  async setLocalDescription(d) {
    this.localDescription = d;
    setTimeout(() => {
      this.iceGatheringState = 'complete';
      this._emit('icecandidate', { candidate: null });
      this._emit('icegatheringstatechange');
    }, 1);
  }
  async setRemoteDescription(d) { this.remoteDescription = d; }
  close() {}
}
global.RTCPeerConnection = StandInPeerConnection;
global.window = global;
global.RTCSessionDescription = class { constructor(d) { Object.assign(this, d); } };

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

function args(name) {
  const out = [];
  process.argv.forEach((a, i) => { if (a === '--' + name) out.push(process.argv[i + 1]); });
  return out;
}

const uri = arg('uri');
const answerMode = arg('answer', 'auto');
const local = arg('local', null);
const [recoveryMin, recoveryMax] = arg('recovery', '600,600').split(',').map(Number);
const headers = {};
args('header').forEach((h) => { const i = h.indexOf(':'); headers[h.slice(0, i).trim()] = h.slice(i + 1).trim(); });
function nodeSocket(url) {
  const requestOptions = local ? { localAddress: local } : {};
  return new NodeWebSocket(url, { origin: 'https://phone.example.com', requestOptions, headers });
}
const socketList = arg('sockets', null)
  ? JSON.parse(arg('sockets')).map((s) => ({ socket: nodeSocket(s.url), weight: s.weight || 0 }))
  : [{ socket: nodeSocket(arg('ws')), weight: 0 }];
const socket = socketList[0].socket;
const ua = new JsSIP.UA({
  sockets: socketList, uri, register: process.argv.includes('--autoregister'), session_timers: false,
  connection_recovery_min_interval: recoveryMin, connection_recovery_max_interval: recoveryMax,
  register_expires: 600,
});
// The TCP socket under a connected JsSIP socket (the 'websocket' package's
// W3CWebSocket keeps its connection in _connection): its local address and port.
function localEnd(s) {
  const tcp = s && s._ws && s._ws._connection && s._ws._connection.socket;
  return tcp ? `${tcp.localAddress}:${tcp.localPort}` : null;
}
JsSIP.debug.disable('JsSIP:*');
const callOptions = { mediaConstraints: { audio: false, video: false }, mediaStream: { getTracks: () => [], getAudioTracks: () => [], getVideoTracks: () => [] },
  sessionTimersExpires: 600 };
let current = null;

function watch(session, tag) {
  session.on('progress', (e) => emit({ event: 'progress', tag, status: e.response ? e.response.status_code : null }));
  session.on('accepted', () => emit({ event: 'accepted', tag }));
  session.on('confirmed', () => emit({ event: 'confirmed', tag }));
  session.on('ended', (e) => emit({ event: 'ended', tag, originator: e.originator, cause: e.cause }));
  session.on('failed', (e) => emit({ event: 'failed', tag, originator: e.originator, cause: e.cause,
    status: e.message && e.message.status_code ? e.message.status_code : null }));
}

ua.on('connected', (e) => emit({ event: 'connected', url: e.socket.socket.url, local: localEnd(e.socket.socket) }));
ua.on('disconnected', (e) => emit({ event: 'disconnected', url: e.socket ? e.socket.url : null,
  code: e.code === undefined ? null : e.code, error: !!e.error }));
ua.on('registered', (e) => emit({ event: 'registered', status: e.response.status_code,
  contacts: e.response.getHeaders('contact'), own: ua.contact.uri.toString() }));
ua.on('registrationFailed', (e) => emit({ event: 'registrationFailed', cause: e.cause,
  status: e.response ? e.response.status_code : null }));
ua.on('newMessage', (e) => {
  if (e.originator === 'remote') emit({ event: 'message', from: e.request.from.uri.toString(), body: e.request.body });
});
ua.on('newRTCSession', (e) => {
  if (e.originator !== 'remote') return;
  const session = e.session;
  current = session;
  emit({ event: 'incoming', from: e.request.from.uri.toString(), call_id: e.request.call_id });
  watch(session, 'in');
  if (answerMode === 'auto') setTimeout(() => session.answer(callOptions), 20);
});

async function manyCalls(cmd) {
  let ok = 0; let failed = 0; let next = 0; const causes = {};
  const one = () => new Promise((resolve) => {
    const session = ua.call(cmd.target, callOptions);
    let done = false;
    const finish = (good, cause) => {
      if (done) return; done = true;
      if (good) ok += 1; else { failed += 1; causes[cause] = (causes[cause] || 0) + 1; }
      resolve();
    };
    session.on('confirmed', () => setTimeout(() => session.terminate(), cmd.hold_ms || 50));
    session.on('ended', (e) => finish(true, e.cause));
    session.on('failed', (e) => finish(false, e.cause));
  });
  const worker = async () => { while (next < cmd.count) { next += 1; await one(); } };
  await Promise.all(Array.from({ length: cmd.concurrency || 1 }, worker));
  emit({ event: 'calls_done', ok, failed, causes });
}

const handlers = {
  register: () => ua.register(),
  message: (cmd) => {
    ua.sendMessage(cmd.target, cmd.body, { eventHandlers: {
      succeeded: (e) => emit({ event: 'message_sent', status: e.response.status_code }),
      failed: (e) => emit({ event: 'message_failed', cause: e.cause, status: e.response ? e.response.status_code : null }),
    } });
  },
  call: (cmd) => { current = ua.call(cmd.target, callOptions); watch(current, 'out'); },
  hangup: () => { if (current) current.terminate(); },
  answer: () => { if (current) current.answer(callOptions); },
  calls: (cmd) => { manyCalls(cmd); },
  drop: () => { socketList.forEach((s) => { if (s.socket._ws) s.socket._ws.close(); }); },
  stop: () => { ua.stop(); setTimeout(() => process.exit(0), 300); },
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try { cmd = JSON.parse(line); } catch (err) { emit({ event: 'error', error: 'bad json' }); return; }
  const handler = handlers[cmd.cmd];
  if (!handler) { emit({ event: 'error', error: 'unknown command ' + cmd.cmd }); return; }
  try { handler(cmd); } catch (err) { emit({ event: 'error', error: String(err) }); }
});
process.stdin.on('end', () => { ua.stop(); setTimeout(() => process.exit(0), 300); });
ua.start();
