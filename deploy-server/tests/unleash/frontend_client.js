// Runs Unleash client-specification cases through Unleash's official frontend SDK
// (`unleash-proxy-client`, the browser SDK, which runs in Node 20 with its global fetch)
// against the frontend API: the server evaluates, the SDK reads the answer.
//
// Reads a JSON list from stdin: [{"name", "url", "token", "tests": [...],
// "variantTests": [...]}], one entry per specification file. Each case gets its own SDK
// client (appName and environment are fixed per client in this SDK), started with the
// case's context; the answers are printed as {"files": [{"name", "tests", "variantTests"}]}.
// Every other request goes by GET with the context in the query, every other by POST.
'use strict';

const { UnleashClient, InMemoryStorageProvider } = require('unleash-proxy-client');

function readStdin() {
  return new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => { text += chunk; });
    process.stdin.on('end', () => resolve(text));
    process.stdin.on('error', reject);
  });
}

let requests = 0;

async function evaluate(entry, testCase, variant) {
  const { appName, environment, ...context } = testCase.context || {};
  const client = new UnleashClient({
    url: entry.url,
    clientKey: entry.token,
    appName: appName || 'deploykit-spec',
    environment: environment || 'default',
    context,
    disableRefresh: true,
    disableMetrics: true,
    storageProvider: new InMemoryStorageProvider(),
    usePOSTrequests: requests++ % 2 === 1,
  });
  let failure = null;
  client.on('error', (error) => { failure = error; });
  await client.start();
  client.stop();
  if (failure) {
    throw new Error(`${entry.name} / ${testCase.description}: ${JSON.stringify(failure)}`);
  }
  return variant ? client.getVariant(testCase.toggleName) : client.isEnabled(testCase.toggleName);
}

async function main() {
  const entries = JSON.parse(await readStdin());
  const files = [];
  for (const entry of entries) {
    const tests = [];
    for (const c of entry.tests) tests.push(await evaluate(entry, c, false));
    const variantTests = [];
    for (const c of entry.variantTests) variantTests.push(await evaluate(entry, c, true));
    files.push({ name: entry.name, tests, variantTests });
  }
  process.stdout.write(JSON.stringify({ files }));
}

main().then(() => process.exit(0), (error) => {
  process.stderr.write(String(error && error.stack || error) + '\n');
  process.exit(1);
});
