#!/usr/bin/env node
// A reference callsight device client in Node: what an Android agent does, in a few hundred
// lines that run anywhere. It speaks only the contract in proto/callsight/v1 (loaded at run time,
// no generated code), and shows the rules a device must follow (README, "Writing an Android
// agent"):
//
//   - RegisterDevice once, with a one-time enrollment code; keep the device token it returns and
//     send it as `authorization: Bearer csd_...` on every Stream.
//   - Each batch has a seq and a batch_id that stays the same across re-sends; keep it until its
//     ack arrives (acks may come out of order), then forget it.
//   - A stream that fails loses the acks it still owed: re-send every un-acked batch on a new
//     stream (the server deduplicates records, so a batch written before the failure comes back
//     as duplicates).
//   - UNAVAILABLE (and RESOURCE_EXHAUSTED with a retry delay): wait the RetryInfo delay from the
//     grpc-status-details-bin trailer, else exponential backoff with full jitter.
//   - A REJECTED ack is final: log its reason and never re-send the batch (it cannot succeed).
//   - UNAUTHENTICATED: the device was revoked (or the token is wrong); stop and enroll again.
//
// Usage: node agent.js --target HOST:PORT --enrollment-code cse_... [--token-file PATH]
//          [--batches N] [--calls-per-batch N] [--empty-batch SEQ]... [--tls]
// Prints one JSON summary on stdout and one JSON line per event on stderr. Exit status: 0 when
// every batch was answered (acked or rejected), 1 when it gave up, 2 on a usage error, 3 when
// the device must enroll again.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const USAGE = `usage: node agent.js --target HOST:PORT --enrollment-code CODE [options]

  --target HOST:PORT       the callsight server (or the load balancer in front of it)
  --enrollment-code CODE   one-time code from AdminService.CreateEnrollment (cse_...); not
                           needed when --token-file holds a device already
  --token-file PATH        keeps the device's identity (device id, token, policy version) across
                           runs: read when it exists, written after RegisterDevice, deleted
                           when the server answers UNAUTHENTICATED (revoked: enroll again)
  --batches N              call-log batches to send (default 5)
  --calls-per-batch N      calls in each batch, at most 10000 (default 100)
  --id-prefix TEXT         prefix of the call ids (default: random), so runs do not collide
  --region CC              ISO 3166-1 alpha-2 region of the SIM (default: the tenant's)
  --empty-batch SEQ        send batch SEQ without a payload, which the server answers REJECTED
                           (shows that a rejected batch is never re-sent); repeatable
  --max-attempts N         tries in a row without progress before giving up (default 8)
  --proto-dir DIR          root of the .proto files (default: the repository's proto/)
  --tls                    use TLS with the system's roots instead of plain text
`;

// Exponential backoff when the server gave no RetryInfo: full jitter between 0 and
// min(MAX, BASE * 2^attempt), so a fleet that lost its server does not come back in lockstep.
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// A little jitter on top of the server's RetryInfo delay, for the same reason.
const RETRY_INFO_JITTER = 0.1;
const MAX_CALLS_PER_BATCH = 10_000;
const DAY_MS = 86_400_000;

// google.rpc.Status and RetryInfo, the rich error details the server puts in the
// grpc-status-details-bin trailer (googleapis google/rpc/status.proto, error_details.proto).
const RICH_STATUS = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: {
              fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } },
            },
            Duration: {
              fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } },
            },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            RetryInfo: { fields: { retry_delay: { type: 'google.protobuf.Duration', id: 1 } } },
          },
        },
      },
    },
  },
});
const STATUS = RICH_STATUS.lookupType('google.rpc.Status');
const RETRY_INFO = RICH_STATUS.lookupType('google.rpc.RetryInfo');
const RETRY_INFO_URL = 'type.googleapis.com/google.rpc.RetryInfo';

function log(event, fields = {}) {
  process.stderr.write(`${JSON.stringify({ event, ...fields })}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function options(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      target: { type: 'string' },
      'enrollment-code': { type: 'string' },
      'token-file': { type: 'string' },
      batches: { type: 'string', default: '5' },
      'calls-per-batch': { type: 'string', default: '100' },
      'id-prefix': { type: 'string', default: crypto.randomBytes(4).toString('hex') },
      region: { type: 'string', default: '' },
      'empty-batch': { type: 'string', multiple: true, default: [] },
      'max-attempts': { type: 'string', default: '8' },
      'proto-dir': { type: 'string', default: path.join(__dirname, '..', '..', 'proto') },
      tls: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const count = (name, min, max) => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new Error(`--${name} must be a whole number from ${min} to ${max}: ${values[name]}`);
    }
    return value;
  };
  if (!values.target) {
    throw new Error('--target is required');
  }
  const tokenFile = values['token-file'];
  if (!values['enrollment-code'] && !(tokenFile && fs.existsSync(tokenFile))) {
    throw new Error('--enrollment-code is required unless --token-file names a saved device');
  }
  return {
    target: values.target,
    enrollmentCode: values['enrollment-code'],
    tokenFile,
    batches: count('batches', 1, 1_000_000),
    callsPerBatch: count('calls-per-batch', 1, MAX_CALLS_PER_BATCH),
    idPrefix: values['id-prefix'],
    region: values.region,
    emptyBatches: new Set(values['empty-batch'].map(Number)),
    maxAttempts: count('max-attempts', 1, 1000),
    protoDir: values['proto-dir'],
    tls: values.tls,
  };
}

function loadContract(protoDir) {
  const definition = protoLoader.loadSync(['callsight/v1/ingest.proto'], {
    includeDirs: [protoDir],
    keepCase: true, // field names as in the .proto: batch_id, not batchId
    longs: Number, // seq and epoch milliseconds fit a double exactly
    enums: String, // 'UPLOAD_RESULT_ACCEPTED' rather than 1
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).callsight.v1;
}

// The RetryInfo delay in the error's trailer, in milliseconds, or null when there is none.
function retryInfoDelayMs(error) {
  const raw = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (raw.length === 0) {
    return null;
  }
  try {
    const status = STATUS.decode(raw[0]);
    for (const detail of status.details) {
      if (detail.type_url === RETRY_INFO_URL) {
        const delay = RETRY_INFO.decode(detail.value).retry_delay;
        if (delay) {
          return Number(delay.seconds) * 1000 + Math.round((delay.nanos || 0) / 1e6);
        }
      }
    }
  } catch (decodeError) {
    log('bad_status_details', { error: String(decodeError) });
  }
  return null;
}

// How long to wait before the next try after `error`, or null when a retry cannot help.
function retryDelay(error, attempt) {
  const code = error.code;
  const hinted = retryInfoDelayMs(error);
  const retryable = code === grpc.status.UNAVAILABLE || code === grpc.status.RESOURCE_EXHAUSTED;
  if (hinted !== null && retryable) {
    const ms = Math.round(hinted * (1 + Math.random() * RETRY_INFO_JITTER));
    return { ms, source: 'RetryInfo', hinted };
  }
  // No delay from the server: a lost connection or a deadline; RESOURCE_EXHAUSTED without one
  // (a message over the size limit) fails the same way every time.
  if (code === grpc.status.UNAVAILABLE || code === grpc.status.DEADLINE_EXCEEDED) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
    return { ms: Math.round(Math.random() * ceiling), source: 'backoff', hinted: null };
  }
  return null;
}

class GiveUp extends Error {
  constructor(message, exitCode) {
    super(message);
    this.exitCode = exitCode;
  }
}

// A unary call with the same retry rules as the stream.
async function unaryWithRetry(name, call, maxAttempts, summary) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await new Promise((resolve, reject) =>
        call((error, response) => (error ? reject(error) : resolve(response))),
      );
    } catch (error) {
      const code = grpc.status[error.code];
      const delay = retryDelay(error, attempt);
      if (delay === null || attempt + 1 >= maxAttempts) {
        const exitCode = error.code === grpc.status.UNAUTHENTICATED ? 3 : 1;
        throw new GiveUp(`${name}: ${code}: ${error.details}`, exitCode);
      }
      const backoff = { rpc: name, code, delay_ms: delay.ms, source: delay.source };
      summary.backoffs.push(backoff);
      log('retry', { ...backoff, details: error.details });
      await sleep(delay.ms);
    }
  }
}

function calls(options, seq) {
  // Spread over the last day, oldest first, so a CallSummary of the last day counts them all.
  const total = options.batches * options.callsPerBatch;
  const now = Date.now();
  const records = [];
  for (let k = 0; k < options.callsPerBatch; k += 1) {
    const i = (seq - 1) * options.callsPerBatch + k;
    const type = ['CALL_TYPE_OUTGOING', 'CALL_TYPE_INCOMING', 'CALL_TYPE_MISSED'][i % 3];
    records.push({
      call_id: `${options.idPrefix}-${i}`,
      number: `+91 ${9_800_000_000 + (i % 50)}`,
      name: `Client ${i % 50}`,
      type,
      started_at_ms: now - DAY_MS + 60_000 + Math.floor(((DAY_MS - 120_000) * i) / total),
      duration_s: type === 'CALL_TYPE_MISSED' ? 0 : 30 + (i % 300),
      sim_slot: 0,
    });
  }
  return records;
}

// Opens one stream, sends every pending batch on it, and handles acks until the stream ends.
// Resolves with the number of acks it got; rejects with the stream's error.
function streamOnce(stub, metadata, pending, state, summary) {
  return new Promise((resolve, reject) => {
    const call = stub.Stream(metadata);
    let acks = 0;
    call.on('data', (ack) => {
      acks += 1;
      const batch = pending.get(ack.seq);
      if (!batch || batch.batch_id !== ack.batch_id) {
        log('unexpected_ack', { seq: ack.seq, batch_id: ack.batch_id }); // answered twice: ignore
        return;
      }
      pending.delete(ack.seq);
      if (ack.result === 'UPLOAD_RESULT_ACCEPTED') {
        summary.acked += 1;
        for (const field of ['accepted', 'updated', 'duplicates', 'rejected']) {
          summary.records[field] += ack[field];
        }
        summary.calls_acked += batch.calls ? batch.calls.records.length : 0;
      } else {
        // Final: the same bytes would be refused again. A real agent keeps the reason for
        // support and fixes what made the batch (split it, set a payload).
        const reason = ack.errors.length > 0 ? ack.errors[0].reason : '';
        summary.rejected += 1;
        summary.rejected_batches.push({ seq: ack.seq, batch_id: ack.batch_id, reason });
        log('rejected', { seq: ack.seq, batch_id: ack.batch_id, reason });
      }
      if (ack.policy_version !== state.policyVersion) {
        state.policyChanged = true; // fetched after this stream: GetPolicy
      }
    });
    call.on('error', (error) => reject(Object.assign(error, { acks })));
    call.on('end', () => resolve(acks));
    // Every un-acked batch, in seq order; write() buffers until HTTP/2 flow control lets it go.
    for (const batch of [...pending.values()].sort((a, b) => a.seq - b.seq)) {
      if (batch.sent > 0) {
        summary.resends += 1;
      }
      batch.sent += 1;
      call.write(batch);
    }
    call.end(); // half-close: the server answers what it read, then ends the stream
  });
}

// The device's identity: from --token-file when it holds one, else from RegisterDevice (and then
// saved there). A phone keeps the same in its Keystore-backed storage.
async function enrolledDevice(stub, options, summary) {
  if (options.tokenFile && fs.existsSync(options.tokenFile)) {
    const saved = JSON.parse(fs.readFileSync(options.tokenFile, 'utf8'));
    log('loaded', { device_id: saved.device_id, policy_version: saved.policy_version });
    return saved;
  }
  const response = await unaryWithRetry(
    'RegisterDevice',
    (done) =>
      stub.RegisterDevice(
        {
          enrollment_code: options.enrollmentCode,
          device: {
            model: 'node-agent',
            manufacturer: 'callsight',
            app_version: '1.0.0',
            region: options.region,
          },
        },
        { deadline: Date.now() + 30_000 },
        done,
      ),
    options.maxAttempts,
    summary,
  );
  const device = {
    device_id: response.device_id,
    device_token: response.device_token,
    policy_version: response.policy.version,
  };
  log('registered', {
    device_id: device.device_id,
    employee_id: response.employee_id,
    policy_version: device.policy_version,
  });
  saveDevice(options, device);
  return device;
}

function saveDevice(options, device) {
  if (options.tokenFile) {
    fs.writeFileSync(options.tokenFile, JSON.stringify(device), { mode: 0o600 });
  }
}

async function run(options) {
  const v1 = loadContract(options.protoDir);
  const credentials = options.tls
    ? grpc.credentials.createSsl()
    : grpc.credentials.createInsecure();
  const stub = new v1.IngestService(options.target, credentials, {
    // Find a dead connection while a batch waits for its ack (the server allows pings every 10 s).
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
  });
  const summary = {
    device_id: '',
    batches: options.batches,
    acked: 0,
    rejected: 0,
    resends: 0,
    streams: 0,
    calls_acked: 0,
    records: { accepted: 0, updated: 0, duplicates: 0, rejected: 0 },
    rejected_batches: [],
    backoffs: [],
    policy_fetches: 0,
  };
  try {
    const device = await enrolledDevice(stub, options, summary);
    summary.device_id = device.device_id;
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${device.device_token}`);
    const state = { policyVersion: device.policy_version, policyChanged: false };

    // The outbox: what a phone would keep on disk until acked.
    const pending = new Map();
    for (let seq = 1; seq <= options.batches; seq += 1) {
      const batch = { seq, batch_id: crypto.randomUUID(), sent: 0 };
      if (!options.emptyBatches.has(seq)) {
        batch.calls = { records: calls(options, seq) };
      }
      pending.set(seq, batch);
    }

    let attempt = 0;
    while (pending.size > 0) {
      summary.streams += 1;
      let failure = null;
      let acks = 0;
      try {
        acks = await streamOnce(stub, metadata, pending, state, summary);
      } catch (error) {
        failure = error;
        acks = error.acks;
      }
      if (state.policyChanged) {
        state.policyChanged = false;
        const response = await unaryWithRetry(
          'GetPolicy',
          (done) => stub.GetPolicy({}, metadata, { deadline: Date.now() + 30_000 }, done),
          options.maxAttempts,
          summary,
        );
        state.policyVersion = response.policy.version;
        summary.policy_fetches += 1;
        saveDevice(options, { ...device, policy_version: state.policyVersion });
      }
      if (pending.size === 0) {
        break;
      }
      attempt = acks > 0 ? 0 : attempt + 1; // progress resets the backoff
      if (failure === null) {
        // Ended cleanly with batches unanswered (cannot happen with this server): try again.
        failure = Object.assign(new Error('stream ended with batches unanswered'), {
          code: grpc.status.UNAVAILABLE,
          details: 'stream ended with batches unanswered',
          metadata: null,
        });
      }
      if (failure.code === grpc.status.UNAUTHENTICATED) {
        throw new GiveUp(`Stream: UNAUTHENTICATED: ${failure.details}`, 3);
      }
      const delay = retryDelay(failure, attempt);
      if (delay === null || attempt >= options.maxAttempts) {
        throw new GiveUp(`Stream: ${grpc.status[failure.code]}: ${failure.details}`, 1);
      }
      const code = grpc.status[failure.code];
      summary.backoffs.push({
        rpc: 'Stream',
        code,
        delay_ms: delay.ms,
        source: delay.source,
        hinted_ms: delay.hinted,
      });
      log('stream_failed', {
        code,
        details: failure.details,
        unacked: pending.size,
        delay_ms: delay.ms,
        source: delay.source,
        hinted_ms: delay.hinted,
      });
      await sleep(delay.ms);
    }
    return { summary, exitCode: 0 };
  } catch (error) {
    if (!(error instanceof GiveUp)) {
      throw error;
    }
    summary.error = error.message;
    log('gave_up', { error: error.message });
    if (error.exitCode === 3 && options.tokenFile) {
      fs.rmSync(options.tokenFile, { force: true }); // revoked: this token is of no further use
    }
    return { summary, exitCode: error.exitCode };
  } finally {
    stub.close();
  }
}

async function main() {
  let parsed;
  try {
    parsed = options(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`agent.js: ${error.message}\n${USAGE}`);
    return 2;
  }
  const { summary, exitCode } = await run(parsed);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  return exitCode;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`agent.js: ${error.stack}\n`);
    process.exitCode = 1;
  },
);
