// Capture what SIP.js sends over WebSocket (REGISTER, MESSAGE, OPTIONS).
import fs from 'fs';
import { WebSocketServer, WebSocket } from 'ws';
globalThis.WebSocket = WebSocket;
const { UserAgent, Registerer, Messager } = await import('sip.js');

let n = 0;
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'sip' });
wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const text = data.toString();
    if (!text.trim()) return;
    n += 1;
    const method = text.split(' ')[0];
    fs.writeFileSync(`sipjs_${String(n).padStart(2, '0')}_${method.replace(/\//g, '')}.sip`, data);
    if (text.startsWith('SIP/2.0') || method === 'ACK') return;
    const hdr = (name) => text.split('\r\n').filter(l => l.toLowerCase().startsWith(name.toLowerCase() + ':'));
    const lines = ['SIP/2.0 200 OK'];
    for (const h of ['Via', 'From', 'To', 'Call-ID', 'CSeq']) hdr(h).forEach(l => lines.push(l + (h === 'To' ? ';tag=srv2' : '')));
    if (method === 'REGISTER') hdr('Contact').forEach(l => lines.push(l + ';expires=600'));
    lines.push('Content-Length: 0');
    ws.send(lines.join('\r\n') + '\r\n\r\n');
  });
});
wss.on('listening', async () => {
  const port = wss.address().port;
  const ua = new UserAgent({ uri: UserAgent.makeURI('sip:bob@example.com'), displayName: 'Bob Smith',
    transportOptions: { server: `ws://127.0.0.1:${port}` }, logLevel: 'error' });
  await ua.start();
  const reg = new Registerer(ua);
  await reg.register();
  setTimeout(async () => {
    await new Messager(ua, UserAgent.makeURI('sip:alice@example.com'), 'hi alice, «ça va?»').message();
    setTimeout(async () => { await reg.unregister(); setTimeout(() => process.exit(0), 300); }, 300);
  }, 300);
  setTimeout(() => process.exit(2), 8000);
});
