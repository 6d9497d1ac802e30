// A SIP.js user agent driven by the Python tests: JSON commands on stdin,
// JSON events on stdout (one object per line) — the same protocol as ua.js.
//
//   node sipjs_ua.mjs --ws ws://127.0.0.1:PORT --uri sip:carol@example.com
//
// Commands: {"cmd":"register"} {"cmd":"message","target":URI,"body":TEXT} {"cmd":"stop"}
import readline from 'readline';
import { WebSocket } from 'ws';

// SIP.js expects the browser's WebSocket, which always sends an Origin.
class BrowserWebSocket extends WebSocket {
  constructor(url, protocols) { super(url, protocols, { origin: 'https://phone.example.com' }); }
}
globalThis.WebSocket = BrowserWebSocket;
const { UserAgent, Registerer, Messager } = await import('sip.js');

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

const ua = new UserAgent({
  uri: UserAgent.makeURI(arg('uri')),
  transportOptions: { server: arg('ws') },
  logLevel: 'error',
  delegate: {
    onMessage: (message) => {
      emit({ event: 'message', from: message.request.from.uri.toString(), body: message.request.body });
      message.accept();
    },
  },
});
let registerer = null;

const handlers = {
  register: () => {
    registerer = registerer || new Registerer(ua, { expires: 600 });
    registerer.register({ requestDelegate: {
      onAccept: (response) => emit({ event: 'registered', status: response.message.statusCode }),
      onReject: (response) => emit({ event: 'registrationFailed', status: response.message.statusCode }),
    } });
  },
  message: (cmd) => {
    new Messager(ua, UserAgent.makeURI(cmd.target), cmd.body).message({ requestDelegate: {
      onAccept: (response) => emit({ event: 'message_sent', status: response.message.statusCode }),
      onReject: (response) => emit({ event: 'message_failed', status: response.message.statusCode }),
    } });
  },
  stop: async () => {
    try { if (registerer) await registerer.unregister(); } catch (err) { /* already gone */ }
    setTimeout(() => process.exit(0), 300);
  },
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try { cmd = JSON.parse(line); } catch (err) { emit({ event: 'error', error: 'bad json' }); return; }
  const handler = handlers[cmd.cmd];
  if (!handler) { emit({ event: 'error', error: 'unknown command ' + cmd.cmd }); return; }
  try { handler(cmd); } catch (err) { emit({ event: 'error', error: String(err) }); }
});
process.stdin.on('end', () => process.exit(0));

ua.start().then(() => emit({ event: 'connected' }), (err) => emit({ event: 'error', error: String(err) }));
