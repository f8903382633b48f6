// Measures how long a flag change takes to reach the official Node SDK (`unleash-client`).
//
// Arguments: URL TOKEN FLAG MODE (MODE: polling, with a 1 s refresh interval; delta, polling
// /client/delta every second; or streaming).
// Prints "ready <true|false>" once the SDK has loaded FLAG, then waits for a line on stdin
// (sent right after the server changed the flag), then prints "seen <milliseconds>" when
// isEnabled(FLAG) has flipped, or "timeout" after 15 s. Run with NODE_PATH pointing at the
// node_modules holding unleash-client.
'use strict';

const readline = require('readline');
const { Unleash, InMemStorageProvider } = require('unleash-client');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const [url, token, flag, mode] = process.argv.slice(2);
  const client = new Unleash({
    url,
    appName: 'deploykit-watch',
    customHeaders: { Authorization: token },
    refreshInterval: 1000,
    disableMetrics: true,
    storageProvider: new InMemStorageProvider(),
    experimentalMode: mode === 'delta' ? { type: 'polling', format: 'delta' } : { type: mode, format: 'full' },
  });
  client.on('error', (error) => process.stderr.write(`${error}\n`));
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  try {
    const deadline = Date.now() + 20000;
    while (!client.getFeatureToggleDefinition(flag)) {
      if (Date.now() > deadline) throw new Error(`the SDK never loaded ${flag}`);
      await sleep(10);
    }
    const before = client.isEnabled(flag, {});
    process.stdout.write(`ready ${before}\n`);
    await lines.next();
    const start = process.hrtime.bigint();
    while (client.isEnabled(flag, {}) === before) {
      if (Number(process.hrtime.bigint() - start) / 1e6 > 15000) {
        process.stdout.write('timeout\n');
        return;
      }
      await sleep(2);
    }
    process.stdout.write(`seen ${Math.round(Number(process.hrtime.bigint() - start) / 1e6)}\n`);
  } finally {
    client.destroy();
  }
}

main().then(() => process.exit(0), (error) => {
  process.stderr.write(String(error && error.stack || error) + '\n');
  process.exit(1);
});
