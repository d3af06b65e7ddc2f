// The official socket.io-client, driven line by line by tests/gateway/test_sio.py.
//
//   node sio_client.mjs URL TOKEN [ORG]
//
// TOKEN (an API token) is sent as the auth payload {token}; an empty TOKEN sends none.
// Prints one JSON line per thing that happens: {"t": ms, "event": name, "data": …}
// for every event received (and connect, connect_error, disconnect), and
// {"t": ms, "ack": id, "data": reply} for the acknowledgement of a command.
// Reads JSON commands on stdin, one per line: {"id": n, "emit": name, "data": …}
// emits with an acknowledgement; {"close": true} disconnects and exits.
import readline from "node:readline";
import { io } from "socket.io-client";

const [url, token, org] = process.argv.slice(2);
const out = (obj) => process.stdout.write(`${JSON.stringify({ t: Date.now(), ...obj })}\n`);

const socket = io(url, {
  query: org ? { org } : {},
  auth: token ? { token } : {},
  reconnection: false,
  timeout: 5000,
});
socket.onAny((event, data) => out({ event, data: data ?? null }));
socket.on("connect", () => out({ event: "connect", data: socket.id }));
socket.on("connect_error", (err) => out({ event: "connect_error", data: err.data ?? err.message }));
socket.on("disconnect", (reason) => out({ event: "disconnect", data: reason }));

const quit = () => {
  socket.close();
  process.exit(0);
};
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const command = JSON.parse(line);
  if (command.close) {
    quit();
    return;
  }
  try {
    const reply = await socket.timeout(5000).emitWithAck(command.emit, command.data);
    out({ ack: command.id, data: reply });
  } catch (err) {
    out({ ack: command.id, error: String(err) });
  }
});
lines.on("close", quit);
setTimeout(quit, 60_000); // never outlive a test that forgot us
