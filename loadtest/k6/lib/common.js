// Shared configuration and helpers for the dispatch k6 scripts.
//
// Everything is driven by environment variables (`k6 run -e NAME=value ...`); see README.md.
// This module deliberately does NOT call `client.load()` at its own top level: k6 resolves
// relative proto import paths against the directory of the module that is being initialised,
// so the protos are loaded (with `protoDir` below) while a top-level script, all of which live
// in loadtest/k6/, is initialised: by the script itself, or by a function of this module that
// the script calls at its top level (`loadGatewayAndReader`).

import grpc from 'k6/net/grpc';
import { check } from 'k6';
import encoding from 'k6/encoding';

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

function raw(name) {
  const v = __ENV[name];
  return v === undefined || v === null || String(v).trim() === '' ? undefined : String(v).trim();
}

export function envStr(name, def) {
  const v = raw(name);
  return v === undefined ? def : v;
}

export function envInt(name, def, min = 0) {
  const v = raw(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new Error(`${name} must be an integer >= ${min}, got '${v}'`);
  }
  return n;
}

export function envNum(name, def, min = 0) {
  const v = raw(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) {
    throw new Error(`${name} must be a number >= ${min}, got '${v}'`);
  }
  return n;
}

export function envBool(name, def) {
  const v = raw(name);
  if (v === undefined) return def;
  return ['1', 'true', 'yes', 'on'].indexOf(v.toLowerCase()) >= 0;
}

// Maximum payload the gateway accepts (TaskSpec.payload: at most 262_144 bytes).
export const MAX_PAYLOAD_BYTES = 262144;
// SubmitTasksRequest.tasks: 1..=1000 items.
export const MAX_BATCH = 1000;

export const cfg = {
  gatewayAddr: envStr('GATEWAY_ADDR', '127.0.0.1:50051'),
  readerAddr: envStr('READER_ADDR', '127.0.0.1:50052'),
  apiKey: envStr('API_KEY', ''),
  // Set TLS=1 to connect with TLS instead of plaintext.
  tls: envBool('TLS', false),
  // Arrival rate: RATE iterations per TIME_UNIT, for DURATION.
  rate: envInt('RATE', 100, 1),
  timeUnit: envStr('TIME_UNIT', '1s'),
  duration: envStr('DURATION', '60s'),
  preVUs: envInt('PRE_VUS', 50, 1),
  maxVUs: envInt('MAX_VUS', 500, 1),
  payloadBytes: envInt('PAYLOAD_BYTES', 256, 0),
  // Number of distinct business keys tasks are spread over (KEYS=1 serialises everything
  // onto one partition; a large value spreads evenly).
  keys: envInt('KEYS', 10000, 1),
  // A type the processor has a handler for: its built-ins are `noop` (succeeds at once) and
  // `simulate` (latency and failures from a JSON payload). A type without a handler sends every
  // task to the DLQ while the latency thresholds pass; scripts/check-k6.sh rejects one.
  taskType: envStr('TASK_TYPE', 'noop'),
  // With TASK_TYPE=simulate: the latency each task asks the handler for.
  simulateLatencyMs: envInt('SIMULATE_LATENCY_MS', 0, 0),
  priority: envStr('PRIORITY', 'PRIORITY_DEFAULT'),
  // IDEMPOTENCY=1 sets a unique idempotency_key on every submitted task (exercises the dedup path).
  idempotency: envBool('IDEMPOTENCY', false),
  // Per-RPC deadline.
  reqTimeout: envStr('REQ_TIMEOUT', '10s'),
  // Proto import root. Relative paths are resolved by k6 against the script's directory
  // (loadtest/k6/), so the default points at <repo>/proto.
  protoDir: envStr('PROTO_DIR', '../../proto'),
};

if (cfg.payloadBytes > MAX_PAYLOAD_BYTES) {
  throw new Error(`PAYLOAD_BYTES must be <= ${MAX_PAYLOAD_BYTES} (gateway limit), got ${cfg.payloadBytes}`);
}
if (cfg.maxVUs < cfg.preVUs) {
  throw new Error(`MAX_VUS (${cfg.maxVUs}) must be >= PRE_VUS (${cfg.preVUs})`);
}

// ---------------------------------------------------------------------------------------------
// RPC names (checked against proto/dispatch/v1/*.proto by scripts/check-k6.sh)
// ---------------------------------------------------------------------------------------------

export const GATEWAY_PROTO = 'dispatch/v1/gateway.proto';
export const QUERY_PROTO = 'dispatch/v1/query.proto';

export const RPC = {
  SubmitTask: 'dispatch.v1.TaskService/SubmitTask',
  SubmitTasks: 'dispatch.v1.TaskService/SubmitTasks',
  CancelTask: 'dispatch.v1.TaskService/CancelTask',
  GetTask: 'dispatch.v1.TaskQueryService/GetTask',
  BatchGetTasks: 'dispatch.v1.TaskQueryService/BatchGetTasks',
  ListTasks: 'dispatch.v1.TaskQueryService/ListTasks',
  WatchTask: 'dispatch.v1.TaskQueryService/WatchTask',
};

export const TERMINAL_STATES = ['TASK_STATE_SUCCEEDED', 'TASK_STATE_DEAD', 'TASK_STATE_CANCELLED'];

// ---------------------------------------------------------------------------------------------
// Connections and calls
// ---------------------------------------------------------------------------------------------

function requireApiKey() {
  if (!cfg.apiKey) {
    throw new Error('API_KEY is required (every dispatch RPC needs `authorization: Bearer <api key>`); pass -e API_KEY=...');
  }
}

// A connection handle: one per gRPC client per VU.
export function conn(client, addr) {
  return { client, addr, connected: false };
}

// Connects once per VU. Equivalent to guarding with `__ITER == 0`, but also correct when an
// iteration's connect failed (it is retried next iteration) and when a VU is reused by another
// scenario.
export function ensureConnected(c) {
  if (c.connected) return;
  requireApiKey();
  c.client.connect(c.addr, { plaintext: !cfg.tls, timeout: cfg.reqTimeout });
  c.connected = true;
}

export function closeConn(c) {
  if (!c.connected) return;
  c.client.close();
  c.connected = false;
}

// The gateway's and the reader's connection handles, over clients with their protos loaded (by
// the calling script, or by loadGatewayAndReader below: see the top of this file).
export function gatewayAndReader(gatewayClient, readerClient) {
  return { gateway: conn(gatewayClient, cfg.gatewayAddr), reader: conn(readerClient, cfg.readerAddr) };
}

// gatewayAndReader() over two new clients, the gateway's with GATEWAY_PROTO and the reader's with
// QUERY_PROTO loaded. Only for a script's top level (k6 allows `load()` in the init context only,
// and the proto paths resolve against the script's directory: see the top of this file).
export function loadGatewayAndReader() {
  const gatewayClient = new grpc.Client();
  gatewayClient.load([cfg.protoDir], GATEWAY_PROTO);
  const readerClient = new grpc.Client();
  readerClient.load([cfg.protoDir], QUERY_PROTO);
  return gatewayAndReader(gatewayClient, readerClient);
}

export function callParams(tags) {
  return {
    metadata: { authorization: `Bearer ${cfg.apiKey}` },
    timeout: cfg.reqTimeout,
    tags: tags || {},
  };
}

export function invoke(c, method, req, tags) {
  ensureConnected(c);
  return c.client.invoke(method, req, callParams(tags));
}

export function isOk(res) {
  return !!res && res.status === grpc.StatusOK;
}

// k6 returns messages in the protobuf JSON mapping (lowerCamelCase names); accept proto names too.
export function field(obj, camel, snake) {
  if (!obj) return undefined;
  if (obj[camel] !== undefined) return obj[camel];
  return snake === undefined ? undefined : obj[snake];
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

function filler(n) {
  let s = '';
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  for (let i = 0; i < n; i++) s += alphabet.charAt((i * 7 + 3) % alphabet.length);
  return s;
}

// Built once per VU: bytes fields travel base64-encoded in the protobuf JSON mapping. The
// `simulate` handler reads its payload as a JSON plan (anything else is a permanent failure), so
// for it the payload is a plan padded to PAYLOAD_BYTES with a field the plan ignores.
function makePayload(n, taskType) {
  if (taskType !== 'simulate') return encoding.b64encode(filler(n));
  const plan = `{"latency_ms":${cfg.simulateLatencyMs},"pad":"`;
  return encoding.b64encode(`${plan}${filler(Math.max(0, n - plan.length - 2))}"}`);
}

export const payloadB64 = makePayload(cfg.payloadBytes, cfg.taskType);

export function businessKey() {
  return `lt-key-${Math.floor(Math.random() * cfg.keys)}`;
}

let seq = 0;

export function taskSpec() {
  seq++;
  const spec = {
    business_key: businessKey(),
    task_type: cfg.taskType,
    payload: payloadB64,
    priority: cfg.priority,
  };
  if (cfg.idempotency) {
    // 1..=128 printable ASCII characters.
    spec.idempotency_key = `lt-${__VU}-${seq}-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  }
  return spec;
}

// ---------------------------------------------------------------------------------------------
// Scenarios and thresholds
// ---------------------------------------------------------------------------------------------

export function arrivalScenario({ exec, rate, preVUs, maxVUs, tags }) {
  const s = {
    executor: 'constant-arrival-rate',
    rate: rate === undefined ? cfg.rate : rate,
    timeUnit: cfg.timeUnit,
    duration: cfg.duration,
    preAllocatedVUs: preVUs === undefined ? cfg.preVUs : preVUs,
    maxVUs: maxVUs === undefined ? cfg.maxVUs : maxVUs,
  };
  if (exec) s.exec = exec;
  if (tags) s.tags = tags;
  return s;
}

// Latency limits: <PREFIX>_P95_MS / <PREFIX>_P99_MS win over P95_MS / P99_MS, which win over the
// script's defaults.
export function latencyLimits(prefix, defP95, defP99) {
  const p95 = envNum(`${prefix}_P95_MS`, envNum('P95_MS', defP95, 1), 1);
  const p99 = envNum(`${prefix}_P99_MS`, envNum('P99_MS', defP99, 1), 1);
  return { p95, p99 };
}

// Design-note targets: submit p95 < 500 ms, get p95 < 200 ms. p99 defaults are 2x p95.
export const SUBMIT_LIMITS = { p95: 500, p99: 1000 };
export const GET_LIMITS = { p95: 200, p99: 400 };
// Submit to terminal state as seen by WatchTask (e2e.js): Kafka, the processor, MySQL, the
// events topic and the reader, for a handler that returns at once.
export const E2E_LIMITS = { p95: 1000, p99: 2000 };

// specs: [{ scenario, p95, p99 }]. Latency and check thresholds are scoped to the scenario tag
// so setup() traffic (e.g. polling for freshly submitted tasks) does not count.
export function buildThresholds(specs) {
  const checkRate = envNum('CHECK_RATE', 0.99, 0);
  const t = {
    checks: [`rate>${checkRate}`],
    dropped_iterations: ['count==0'],
  };
  for (const s of specs) {
    t[`grpc_req_duration{scenario:${s.scenario}}`] = [`p(95)<${s.p95}`, `p(99)<${s.p99}`];
    t[`checks{scenario:${s.scenario}}`] = [`rate>${checkRate}`];
  }
  return t;
}

// Summary output: include p(99) next to the usual trend stats.
export const summaryTrendStats = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];

// ---------------------------------------------------------------------------------------------
// Hot set for GetTask (used by get.js and mixed.js setup())
// ---------------------------------------------------------------------------------------------

export const HOT_SET = envInt('HOT_SET', 100, 1);
export const SETUP_TIMEOUT_S = envInt('SETUP_TIMEOUT_S', 60, 1);

// Submits HOT_SET tasks through the gateway, then polls the reader (GetTask with min_version,
// the read-your-writes token) until each is visible. Returns the visible task ids.
export function createHotSet(gateway, reader, sleepFn) {
  const submitted = [];
  for (let i = 0; i < HOT_SET; i++) {
    const res = invoke(gateway, RPC.SubmitTask, { task: taskSpec() }, { phase: 'setup' });
    if (!isOk(res)) {
      throw new Error(`setup: SubmitTask failed: status=${res && res.status} ${res && res.error ? JSON.stringify(res.error) : ''}`);
    }
    const id = field(res.message, 'taskId', 'task_id');
    const version = field(res.message, 'version', 'version');
    if (!id) throw new Error(`setup: SubmitTask returned no task id: ${JSON.stringify(res.message)}`);
    submitted.push({ id, version: version === undefined ? '0' : String(version) });
  }

  const deadline = Date.now() + SETUP_TIMEOUT_S * 1000;
  let pending = submitted;
  const ready = [];
  while (pending.length > 0 && Date.now() < deadline) {
    const still = [];
    for (const t of pending) {
      const res = invoke(reader, RPC.GetTask, { task_id: t.id, min_version: t.version }, { phase: 'setup' });
      if (isOk(res)) {
        ready.push(t.id);
      } else if (res && (res.status === grpc.StatusFailedPrecondition || res.status === grpc.StatusNotFound)) {
        still.push(t); // not visible yet
      } else {
        throw new Error(`setup: GetTask(${t.id}) failed: status=${res && res.status} ${res && res.error ? JSON.stringify(res.error) : ''}`);
      }
    }
    pending = still;
    if (pending.length > 0) sleepFn(0.25);
  }
  if (ready.length === 0) {
    throw new Error(`setup: none of ${submitted.length} submitted tasks became visible on the reader within ${SETUP_TIMEOUT_S}s`);
  }
  if (pending.length > 0) {
    console.warn(`setup: ${pending.length}/${submitted.length} tasks not visible after ${SETUP_TIMEOUT_S}s; using ${ready.length}`);
  }
  return ready;
}

// A setup() for scripts that read the hot set: creates it, then closes setup's own connections
// (each VU opens its own). Returns the data the scenarios get: `{ ids }`.
export function hotSetSetup(gateway, reader, sleepFn) {
  const ids = createHotSet(gateway, reader, sleepFn);
  closeConn(gateway);
  closeConn(reader);
  return { ids };
}

// GetTask of a random id of the hot set `ids`, checked (OK, and the task asked for). Returns the
// response, for what else a script counts.
export function getHotTask(reader, ids) {
  const id = ids[Math.floor(Math.random() * ids.length)];
  const res = invoke(reader, RPC.GetTask, { task_id: id });
  const task = isOk(res) ? field(res.message, 'task', 'task') : undefined;
  check(res, {
    'GetTask status is OK': (r) => isOk(r),
    'GetTask returned the requested task': () => !!task && field(task, 'taskId', 'task_id') === id,
  });
  return res;
}
