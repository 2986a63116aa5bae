// Reads Fader flags from Node with the OpenFeature server SDK and the stock flagd provider:
// Fader speaks flagd's gRPC evaluation protocol, so no Fader SDK is needed.
//
// The provider is configured only by its usual environment variables:
//   FLAGD_HOST / FLAGD_PORT   TCP (default localhost:8013, Fader's default gRPC address)
//   FLAGD_SOCKET_PATH         a Unix socket instead (Fader's --uds)
//   FLAGD_RESOLVER=rpc        remote evaluation (the provider's default)
//
// It asks the flags of Fader's demo snapshot (`fader serve --demo`), prints each answer and
// exits 1 if any answer is not the one the demo defines.

import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';

const where = process.env.FLAGD_SOCKET_PATH
  ? `unix:${process.env.FLAGD_SOCKET_PATH}`
  : `${process.env.FLAGD_HOST ?? 'localhost'}:${process.env.FLAGD_PORT ?? 8013}`;

await OpenFeature.setProviderAndWait(new FlagdProvider({ resolverType: 'rpc' }));
const client = OpenFeature.getClient();
const user = { targetingKey: 'user-1', plan: 'pro', age: 30 };

// [what, evaluation, expected fields of the EvaluationDetails]
const checks = [
  ['boolean from a 50/50 rollout', () => client.getBooleanDetails('new-checkout', false, user),
    { value: true, variant: 'on', reason: 'DEFAULT', flagMetadata: { label: 'default rule', version: 1 } }],
  ['object from the treatment config', () => client.getObjectDetails('new-checkout', {}, user),
    { value: { color: 'green' }, variant: 'on' }],
  ['string from a whitelist', () => client.getStringDetails('beta-banner', 'off', { targetingKey: 'alice' }),
    { value: 'on', variant: 'on', reason: 'TARGETING_MATCH', flagMetadata: { label: 'whitelisted' } }],
  ['string from attribute targeting', () => client.getStringDetails('pricing-tier', 'standard', user),
    { value: 'premium', reason: 'TARGETING_MATCH' }],
  ['object from attribute targeting', () => client.getObjectDetails('pricing-tier', {}, user),
    { value: { limit: 100 } }],
  ['killed flag: DISABLED, the code default', () => client.getBooleanDetails('kill-switch-demo', true, user),
    { value: true, variant: undefined, reason: 'DISABLED' }],
  ['not a boolean: TYPE_MISMATCH', () => client.getBooleanDetails('pricing-tier', false, user),
    { value: false, reason: 'ERROR', errorCode: 'TYPE_MISMATCH' }],
  ['not a number: TYPE_MISMATCH', () => client.getNumberDetails('pricing-tier', -1, user),
    { value: -1, reason: 'ERROR', errorCode: 'TYPE_MISMATCH' }],
  ['unknown flag: FLAG_NOT_FOUND', () => client.getStringDetails('no-such-flag', 'fallback', user),
    { value: 'fallback', reason: 'ERROR', errorCode: 'FLAG_NOT_FOUND' }],
];

/** True when every field of `expected` is in `actual` (objects compared field by field). */
function matches(actual, expected) {
  if (expected === null || typeof expected !== 'object') return actual === expected;
  if (actual === null || typeof actual !== 'object') return false;
  return Object.entries(expected).every(([key, value]) => matches(actual[key], value));
}

let failures = 0;
for (const [what, evaluate, expected] of checks) {
  const details = await evaluate();
  const ok = matches(details, expected);
  failures += ok ? 0 : 1;
  const shown = { value: details.value, variant: details.variant, reason: details.reason };
  if (details.errorCode) shown.errorCode = details.errorCode;
  if (details.flagMetadata && Object.keys(details.flagMetadata).length) shown.flagMetadata = details.flagMetadata;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${where} ${what}: ${JSON.stringify(shown)}`);
  if (!ok) console.log(`     expected ${JSON.stringify(expected)}`);
}
await OpenFeature.close();
console.log(failures ? `${failures} of ${checks.length} answers wrong` : `all ${checks.length} answers right`);
process.exit(failures ? 1 : 0);
