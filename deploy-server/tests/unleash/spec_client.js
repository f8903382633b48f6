// Runs Unleash client-specification cases through the official Node SDK (`unleash-client`).
//
// Reads a JSON list from stdin: [{"name", "url", "token", "features": N, "tests": [...],
// "variantTests": [...], "format": "full" or "delta" (optional)}], one entry per specification file, each with its own server. For
// each entry it starts an SDK client against `url`, waits until it has loaded N features,
// evaluates every case with isEnabled / getVariant, and prints one JSON object on stdout:
// {"files": [{"name", "loaded": [...], "tests": [...], "variantTests": [...]}]}.
// Run with NODE_PATH pointing at the node_modules holding unleash-client.
'use strict';

const { Unleash, InMemStorageProvider } = require('unleash-client');

function readStdin() {
  return new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => { text += chunk; });
    process.stdin.on('end', () => resolve(text));
    process.stdin.on('error', reject);
  });
}

async function runFile(entry) {
  const client = new Unleash({
    url: entry.url,
    appName: 'deploykit-spec',
    instanceId: 'spec-' + entry.name,
    customHeaders: { Authorization: entry.token },
    refreshInterval: 1000,
    metricsInterval: 1000,
    storageProvider: new InMemStorageProvider(),
    timeout: 5000,
    // `delta`: poll /client/delta instead of /client/features.
    experimentalMode: { type: 'polling', format: entry.format || 'full' },
  });
  client.on('error', (error) => process.stderr.write(`${entry.name}: ${error}\n`));
  try {
    const deadline = Date.now() + 20000;
    while (client.getFeatureToggleDefinitions().length < entry.features) {
      if (Date.now() > deadline) {
        throw new Error(`${entry.name}: the SDK loaded ${client.getFeatureToggleDefinitions().length} of ${entry.features} features`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const tests = entry.tests.map((c) => client.isEnabled(c.toggleName, c.context || {}));
    const variantTests = entry.variantTests.map((c) => client.getVariant(c.toggleName, c.context || {}));
    return {
      name: entry.name,
      loaded: client.getFeatureToggleDefinitions().map((f) => f.name).sort(),
      tests,
      variantTests,
    };
  } finally {
    client.destroy();
  }
}

async function main() {
  const entries = JSON.parse(await readStdin());
  const files = [];
  for (const entry of entries) {
    files.push(await runFile(entry));
  }
  process.stdout.write(JSON.stringify({ files }));
}

main().then(() => process.exit(0), (error) => {
  process.stderr.write(String(error && error.stack || error) + '\n');
  process.exit(1);
});
