// Capture what JsSIP sends over WebSocket: a tiny SIP-ish WS server answering 200/401.
const fs = require('fs');
const { WebSocketServer } = require('ws');
const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');

class FakePC {
  constructor() { this.signalingState = 'stable'; this.iceGatheringState = 'new'; this.iceConnectionState = 'new'; this.connectionState='new'; this._l = {}; this.localDescription = null; this.remoteDescription = null; }
  addEventListener(ev, fn) { (this._l[ev] = this._l[ev] || []).push(fn); }
  removeEventListener() {}
  _emit(ev, arg) { (this._l[ev] || []).forEach(f => f(arg)); if (this['on' + ev]) this['on' + ev](arg); }
  addTrack() { return {}; } getSenders() { return []; } getReceivers() { return []; } getTransceivers() { return []; }
  addStream() {}
  async createOffer() { return { type: 'offer', sdp: SDP }; }
  async createAnswer() { return { type: 'answer', sdp: SDP }; }
  async setLocalDescription(d) { this.localDescription = d; setTimeout(() => { this.iceGatheringState = 'complete'; this._emit('icecandidate', { candidate: null }); this._emit('icegatheringstatechange'); }, 10); }
  async setRemoteDescription(d) { this.remoteDescription = d; }
  close() {}
}
const SDP = 'v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xy7d\r\na=ice-pwd:q3tRn0Kd9c2bXyzl1PLmnoA7\r\na=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n';
global.RTCPeerConnection = FakePC; global.window = global; global.RTCSessionDescription = class { constructor(d) { Object.assign(this, d); } };

let n = 0;
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'sip' });
wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const text = data.toString();
    if (!text.trim()) return;
    n += 1;
    const method = text.split(' ')[0];
    fs.writeFileSync(`jssip_${String(n).padStart(2, '0')}_${method.replace(/\//g, '')}.sip`, data);
    if (text.startsWith('SIP/2.0')) return;
    const hdr = (name) => text.split('\r\n').filter(l => l.toLowerCase().startsWith(name.toLowerCase() + ':'));
    const lines = [];
    let status = '200 OK';
    if (method === 'INVITE') status = '200 OK';
    if (method === 'ACK') return;
    lines.push('SIP/2.0 ' + status);
    hdr('Via').forEach(l => lines.push(l));
    hdr('From').forEach(l => lines.push(l));
    hdr('To').forEach(l => lines.push(l + (method === 'INVITE' ? ';tag=srv1' : '')));
    hdr('Call-ID').forEach(l => lines.push(l));
    hdr('CSeq').forEach(l => lines.push(l));
    if (method === 'REGISTER') hdr('Contact').forEach(l => lines.push(l + ';expires=600'));
    if (method === 'INVITE') {
      lines.push('Contact: <sip:srv@127.0.0.1;transport=ws>');
      lines.push('Content-Type: application/sdp');
      lines.push('Content-Length: ' + Buffer.byteLength(SDP));
      ws.send(lines.join('\r\n') + '\r\n\r\n' + SDP);
      return;
    }
    lines.push('Content-Length: 0');
    ws.send(lines.join('\r\n') + '\r\n\r\n');
  });
});
wss.on('listening', () => {
  const port = wss.address().port;
  const socket = new NodeWebSocket(`ws://127.0.0.1:${port}`, { origin: 'https://app.example.com', requestOptions: {} });
  const ua = new JsSIP.UA({ sockets: [socket], uri: 'sip:alice@example.com', password: 'x', display_name: 'Alice Ñandú', register: true });
  ua.on('registered', () => {
    ua.sendMessage('sip:bob@example.com', 'hello, bob');
    ua.sendOptions ? ua.sendOptions(new JsSIP.URI('sip', 'bob', 'example.com')) : null;
    const s = ua.call('sip:bob@example.com', { mediaConstraints: { audio: true, video: false }, mediaStream: { getTracks: () => [] } });
    s.on('confirmed', () => setTimeout(() => s.terminate(), 100));
    s.on('ended', () => setTimeout(() => { ua.stop(); setTimeout(() => process.exit(0), 500); }, 100));
    s.on('failed', (e) => { console.log('failed', e.cause); ua.stop(); setTimeout(() => process.exit(0), 500); });
  });
  ua.start();
  setTimeout(() => process.exit(2), 8000);
});
