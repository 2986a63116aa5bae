// Split's Node SDK, unchanged, pointed at a Split SDK API (Fader's, or any other) by its
// `urls` setting: the settings README "Move from Split" lists. Driven over stdin/stdout,
// one JSON object per line, by tests/clients/test_split_node.py:
//
//   {"op": "eval", "flags": [...], "lookups": [{"key", "bucketingKey", "attributes"}]}
//       -> {"results": [[[treatment, config], ...per flag], ...per lookup]}
//   {"op": "track", "key", "trafficType", "eventType", "value", "properties"} -> {"ok": bool}
//   {"op": "destroy"} -> {"destroyed": true} (impressions and events flushed), then exit
//
// Environment: SPLIT_URL (the API base, ending in /api), SPLIT_REFRESH (seconds),
// SPLIT_IMPRESSIONS_MODE (DEBUG, OPTIMIZED or NONE).
import { createInterface } from 'node:readline';
import { SplitFactory } from '@splitsoftware/splitio';

const base = process.env.SPLIT_URL;
const refresh = Number(process.env.SPLIT_REFRESH || '1');
const factory = SplitFactory({
  core: { authorizationKey: process.env.SPLIT_SDK_KEY || 'fader-sdk-key' },
  urls: { sdk: base, events: base, auth: base, telemetry: base },
  streamingEnabled: false,
  scheduler: {
    featuresRefreshRate: refresh,
    segmentsRefreshRate: refresh,
    impressionsRefreshRate: refresh,
    eventsPushRate: refresh,
  },
  sync: { impressionsMode: process.env.SPLIT_IMPRESSIONS_MODE || 'DEBUG' },
  startup: { readyTimeout: 30 },
});
const client = factory.client();

function key(lookup) {
  return lookup.bucketingKey
    ? { matchingKey: lookup.key, bucketingKey: lookup.bucketingKey }
    : lookup.key;
}

function answer(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

await client.whenReady();
answer({ ready: true });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const request = JSON.parse(line);
  if (request.op === 'eval') {
    const results = request.lookups.map((lookup) => {
      const got = client.getTreatmentsWithConfig(key(lookup), request.flags, lookup.attributes);
      return request.flags.map((flag) => [got[flag].treatment, got[flag].config]);
    });
    answer({ results });
  } else if (request.op === 'track') {
    const ok = client.track(
      request.key, request.trafficType, request.eventType, request.value, request.properties,
    );
    answer({ ok });
  } else if (request.op === 'destroy') {
    await client.destroy();
    answer({ destroyed: true });
    break;
  }
}
process.exit(0);
