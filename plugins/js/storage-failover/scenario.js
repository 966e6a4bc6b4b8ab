// The recovery plan's scenario 3, storage failure, in JavaScript: the same
// scenario as plugins/storage-failover (Rust), step for step and call for
// call. Detect lost or corrupted objects in the primary bucket by comparing
// its listing and checksums with the secondary's, restore them with
// host-side copies, verify integrity and an upload/download round trip.
//
// Grants it needs: `primary` with read, list, write, delete; `secondary`
// with read, list. Built with componentize-js against wit/ (see build.sh).
import { log } from 'drhost:plugin/log@0.2.0';
import { nowMs } from 'drhost:plugin/clock@0.2.0';
import { listObjects, checksum, copy, put, get, 'delete' as del } from 'drhost:plugin/s3@0.2.0';

const PRIMARY = 'primary';
const SECONDARY = 'secondary';
const CANARY_PREFIX = '.drhost-canary/';
const REPOINT_COMMAND = `echo '{"bucket": "primary"}' > config/storage.json`;

// A capability error (thrown with the WIT error as its payload) as one line.
function describe(e) {
  const p = e && e.payload;
  if (!p || !p.tag) return String(e);
  const names = { denied: 'denied', 'not-found': 'not found', 'too-large': 'too large' };
  return `${names[p.tag] ?? p.tag}: ${p.val}`;
}

function listAll(alias, prefix) {
  const out = [];
  let token;
  for (;;) {
    const page = listObjects(alias, prefix, token, 1000);
    out.push(...page.objects);
    if (page.nextToken === undefined || page.nextToken === null) return out;
    token = page.nextToken;
  }
}

class Failure extends Error {}

function compare() {
  let secondary;
  let primary;
  try {
    secondary = listAll(SECONDARY, '');
  } catch (e) {
    throw new Failure(`listing secondary: ${describe(e)}`);
  }
  try {
    primary = new Map(listAll(PRIMARY, '').map((o) => [o.key, o]));
  } catch (e) {
    throw new Failure(`listing primary: ${describe(e)}`);
  }
  const missing = [];
  const corrupted = [];
  let checked = 0;
  for (const want of secondary) {
    if (want.key.startsWith(CANARY_PREFIX)) continue;
    checked += 1;
    const have = primary.get(want.key);
    if (have === undefined) {
      missing.push(want.key);
    } else if (have.size !== want.size) {
      corrupted.push(want.key);
    } else {
      let a;
      let b;
      try {
        a = checksum(PRIMARY, want.key);
        b = checksum(SECONDARY, want.key);
      } catch (e) {
        throw new Failure(describe(e));
      }
      if (a !== b) corrupted.push(want.key);
    }
  }
  return { missing, corrupted, checked };
}

const f = (key, value) => ({ key, value: String(value) });

function confirmFailure() {
  let d;
  try {
    d = compare();
  } catch (e) {
    if (e instanceof Failure && e.message.startsWith('listing primary')) {
      return { tag: 'detected', val: [f('primary-unreachable', e.message)] };
    }
    return { tag: 'failed', val: e.message };
  }
  const out = [f('objects-checked', d.checked), f('missing', d.missing.length), f('corrupted', d.corrupted.length)];
  if (d.missing.length === 0 && d.corrupted.length === 0) {
    log('info', `primary matches secondary (${d.checked} objects)`);
    return { tag: 'ok', val: out };
  }
  log('warn', `primary bucket damaged: ${d.missing.length} missing, ${d.corrupted.length} corrupted of ${d.checked}`);
  for (const k of [...d.missing, ...d.corrupted]) out.push(f('damaged', k));
  return { tag: 'detected', val: out };
}

function restore(context) {
  let restored = 0;
  let bytes = 0n;
  for (const key of context.filter((c) => c.key === 'damaged').map((c) => c.value)) {
    try {
      const o = copy(SECONDARY, key, PRIMARY, key);
      restored += 1;
      bytes += o.size;
    } catch (e) {
      return { tag: 'failed', val: `restoring ${key} from secondary: ${describe(e)}` };
    }
  }
  log('info', `restored ${restored} objects (${bytes} bytes) from secondary`);
  return { tag: 'ok', val: [f('restored', restored), f('bytes', bytes)] };
}

// The application reads the bucket to use from config/storage.json.
function repoint() {
  try {
    put('config', 'storage.json', new TextEncoder().encode('{"bucket": "primary"}\n'));
  } catch (e) {
    return { tag: 'failed', val: `writing storage.json: ${describe(e)}` };
  }
  return { tag: 'ok', val: [f('bucket', PRIMARY), f('command', REPOINT_COMMAND)] };
}

function verifyIntegrity() {
  let d;
  try {
    d = compare();
  } catch (e) {
    return { tag: 'failed', val: e.message };
  }
  if (d.missing.length === 0 && d.corrupted.length === 0) {
    return { tag: 'ok', val: [f('objects-verified', d.checked)] };
  }
  return {
    tag: 'failed',
    val: `primary still differs from secondary: ${d.missing.length} missing, ${d.corrupted.length} corrupted`,
  };
}

function verifyUploadDownload() {
  const key = `${CANARY_PREFIX}${nowMs()}`;
  const body = new TextEncoder().encode(`drhost canary ${key}`);
  let error;
  let got;
  try {
    put(PRIMARY, key, body);
  } catch (e) {
    error = `upload failed: ${describe(e)}`;
  }
  if (error === undefined) {
    try {
      got = get(PRIMARY, key);
    } catch (e) {
      error = `download failed: ${describe(e)}`;
    }
  }
  // Remove the canary whatever happened, so the bucket is left as found.
  let cleanup;
  try {
    del(PRIMARY, key);
  } catch (e) {
    cleanup = describe(e);
  }
  if (error !== undefined) return { tag: 'failed', val: error };
  if (cleanup !== undefined) return { tag: 'failed', val: `could not delete canary ${key}: ${cleanup}` };
  const same = got.length === body.length && got.every((b, i) => b === body[i]);
  if (!same) return { tag: 'failed', val: 'downloaded canary differs from upload' };
  return { tag: 'ok', val: [f('canary', key), f('round-trip', 'ok')] };
}

const step = (id, phase, budgetSeconds, mutating, description) => ({
  id, phase, component: 'object-storage', budgetSeconds, mutating, description,
});

export const plugin = {
  info() {
    return {
      name: 'storage-failover',
      version: '0.1.0',
      description: 'Scenario 3: restore lost or corrupted objects of the primary bucket from the secondary',
      components: [{
        name: 'object-storage',
        kind: 'storage',
        priority: 'p1',
        rtoSeconds: 3600,
        rpoSeconds: 900,
        description: 'user files in the primary bucket, replicated to the secondary',
      }],
      steps: [
        step('confirm-failure', 'detect', 300, false, "compare the primary's listing and checksums with the secondary's"),
        step('restore-from-secondary', 'recover', 1800, true, 'copy every missing or corrupted object back from the secondary'),
        step('repoint-application', 'recover', 120, true, 'tell the application to use the restored primary (config/storage.json)'),
        step('verify-integrity', 'verify', 600, false, 'every object of the secondary is in the primary with the same sha256'),
        step('verify-upload-download', 'verify', 600, true, 'upload, download and delete a canary object in the primary'),
      ],
    };
  },

  runStep(id, context) {
    switch (id) {
      case 'confirm-failure': return confirmFailure();
      case 'restore-from-secondary': return restore(context);
      case 'repoint-application': return repoint();
      case 'verify-integrity': return verifyIntegrity();
      case 'verify-upload-download': return verifyUploadDownload();
      default: return { tag: 'failed', val: `unknown step ${id}` };
    }
  },
};
