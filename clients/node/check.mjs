// Checks Fader's answers through a stock OpenFeature provider, in any of its three modes:
//
//   node check.mjs rpc          @openfeature/flagd-provider, remote evaluation (FLAGD_HOST/FLAGD_PORT
//                               or FLAGD_SOCKET_PATH: Fader's --grpc-listen or --uds)
//   node check.mjs in-process   @openfeature/flagd-provider, local evaluation of the flags Fader
//                               syncs (FLAGD_HOST/FLAGD_PORT: Fader's --sync-listen, 8015)
//   node check.mjs ofrep        @openfeature/ofrep-provider (OFREP_ENDPOINT: Fader's
//                               --ofrep-listen, default http://localhost:8016; OFREP_HEADERS
//                               such as Authorization=Bearer%20TOKEN)
//
// Input, one JSON object a line on stdin:
//   {"type": "boolean|string|number|object", "flag": "...", "default": ..., "context": {...},
//    "expect": {"value": ..., "variant": ..., "reason": ..., "errorCode": ...}}
//   {"wait": "change"}   wait for the provider's configuration-changed event, then go on
// For each check it prints "ok" or "FAIL" with the answer; at the end "all N answers right",
// or "M of N answers wrong" and exit status 1.

import readline from 'node:readline';
import { OpenFeature, ProviderEvents } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const mode = process.argv[2] ?? 'rpc';

function ofrepHeaders() {
  return (process.env.OFREP_HEADERS ?? '')
    .split(',')
    .filter((pair) => pair.includes('='))
    .map((pair) => pair.split('=').map((part) => decodeURIComponent(part.trim())));
}

function provider() {
  if (mode === 'ofrep') {
    return new OFREPProvider({
      baseUrl: process.env.OFREP_ENDPOINT ?? 'http://localhost:8016',
      headers: ofrepHeaders(),
    });
  }
  if (mode === 'rpc' || mode === 'in-process') return new FlagdProvider({ resolverType: mode });
  throw new Error(`unknown mode ${mode}: rpc, in-process or ofrep`);
}

let changes = 0;
let changed = () => {};
OpenFeature.addHandler(ProviderEvents.ConfigurationChanged, () => {
  changes += 1;
  changed();
});
await OpenFeature.setProviderAndWait(provider());
const client = OpenFeature.getClient();
const evaluate = {
  boolean: (...args) => client.getBooleanDetails(...args),
  string: (...args) => client.getStringDetails(...args),
  number: (...args) => client.getNumberDetails(...args),
  object: (...args) => client.getObjectDetails(...args),
};

/** True when every field of `expected` is in `actual` (objects compared field by field). */
function matches(actual, expected) {
  if (expected === null) return actual === null || actual === undefined;
  if (typeof expected !== 'object') return actual === expected;
  if (actual === null || typeof actual !== 'object') return false;
  const keys = new Set([...Object.keys(expected), ...Object.keys(actual)]);
  return [...keys].every((key) => matches(actual[key], expected[key] ?? null));
}

function fields(details, expected) {
  const shown = {};
  for (const key of Object.keys(expected)) shown[key] = details[key] ?? null;
  return shown;
}

let checks = 0;
let failures = 0;
for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const request = JSON.parse(line);
  if (request.wait === 'change') {
    const before = changes;
    console.log('waiting for a change');
    await new Promise((resolve) => {
      changed = resolve;
      if (changes > before) resolve();
    });
    console.log('changed');
    continue;
  }
  checks += 1;
  const details = await evaluate[request.type](request.flag, request.default, request.context ?? {});
  const answer = fields(details, request.expect);
  const ok = Object.entries(request.expect).every(([key, value]) => matches(answer[key], value));
  failures += ok ? 0 : 1;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${mode} ${request.type} ${request.flag} ${JSON.stringify(answer)}`);
  if (!ok) console.log(`     expected ${JSON.stringify(request.expect)}`);
}
await OpenFeature.close();
console.log(failures ? `${failures} of ${checks} answers wrong` : `all ${checks} answers right`);
process.exit(failures ? 1 : 0);
