// Checks one k6 script of loadtest/k6/ by a dry run under node (scripts/check-k6.sh, check 3;
// k6 itself is not required): its `options`, its client.load() files, and every request its
// setup() and scenarios send (methods, auth metadata, messages against the API's schema, task
// types against the processor's registry).
//
//   node scripts/k6/harness.mjs <schema.json> <proto_root> <script.js> <task-types.json>
//
// <schema.json>: `dispatch-loadgen proto-schema` (the API from the descriptor set compiled into
// the binaries). <task-types.json>: `dispatch-processor --print-task-types=json`, a JSON array of
// the task types the processor's registry has a handler for with the effective settings; a
// TaskSpec.task_type outside it fails the run, since every such task would be dead-lettered while
// the latency thresholds pass.
//
// Evaluates one k6 script under node with stand-ins for the k6 modules it imports ('k6',
// 'k6/net/grpc', 'k6/encoding', 'k6/metrics'), then:
//   - validates the exported `options` (constant-arrival-rate scenarios, exec functions exist,
//     threshold syntax, grpc_req_duration p95/p99, checks rate, dropped_iterations count==0);
//   - checks every client.load() (init context only; proto files and their imports resolve
//     against the import paths, relative to the script's directory, as k6 does);
//   - runs setup(), a few iterations of every scenario's exec function and teardown() against a
//     fake gRPC client that validates each invoke: method loaded on that client, client
//     connected (and not in init), `authorization: Bearer ...` metadata, and the request
//     message against the proto schema (field names, JSON-mapping types, enums, oneofs,
//     documented limits, known task types). Server streams (grpc.Stream) are checked the same way
//     and deliver their fake messages asynchronously, as k6 does. Fake responses follow the protobuf JSON mapping k6 uses
//     (lowerCamelCase names, 64-bit integers as strings, enums as names).
// Exits 1 with a list of problems on failure.

import { register } from 'node:module';
import { readFileSync, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [schemaPath, protoRootArg, scriptArg, taskTypesPath] = process.argv.slice(2);
if (!schemaPath || !protoRootArg || !scriptArg || !taskTypesPath) {
  console.error('usage: node harness.mjs <schema.json> <proto_root> <script.js> <task-types.json>');
  process.exit(2);
}
const knownTaskTypes = JSON.parse(readFileSync(taskTypesPath, 'utf8'));
if (!Array.isArray(knownTaskTypes) || knownTaskTypes.length === 0 || !knownTaskTypes.every((t) => typeof t === 'string' && t !== '')) {
  console.error(`${taskTypesPath}: not a non-empty JSON array of task types (dispatch-processor --print-task-types=json)`);
  process.exit(2);
}
const schema = JSON.parse(readFileSync(schemaPath, 'utf8'));
const protoRoot = path.resolve(protoRootArg);
const scriptPath = path.resolve(scriptArg);
const scriptDir = path.dirname(scriptPath);
const k6Dir = scriptDir;

const errors = [];
const err = (m) => errors.push(m);

// ---------------------------------------------------------------------------------------------
// Module hooks: 'k6*' imports -> stubs backed by globalThis.__k6h; .js files under the k6 dir
// are loaded as ES modules (k6 scripts are ESM; there is no package.json "type" here).
// ---------------------------------------------------------------------------------------------

const STUBS = {
  'k6': `const h = globalThis.__k6h.k6;
export const check = h.check; export const sleep = h.sleep; export const group = h.group; export const fail = h.fail;
export default h;`,
  'k6/net/grpc': `const g = globalThis.__k6h.grpc;
export const Client = g.Client; export const Stream = g.Stream;
${Object.keys(grpcStatus()).map((k) => `export const ${k} = ${grpcStatus()[k]};`).join('\n')}
export default g;`,
  'k6/encoding': `const e = globalThis.__k6h.encoding;
export const b64encode = e.b64encode; export const b64decode = e.b64decode; export default e;`,
  'k6/metrics': `const m = globalThis.__k6h.metrics;
export const Counter = m.Counter; export const Rate = m.Rate; export const Trend = m.Trend; export const Gauge = m.Gauge;
export default m;`,
};

const hooks = `
const STUBS = ${JSON.stringify(STUBS)};
const K6DIR = ${JSON.stringify(pathToFileURL(k6Dir).href + '/')};
export async function resolve(spec, ctx, next) {
  if (spec === 'k6' || spec.startsWith('k6/')) {
    if (!(spec in STUBS)) throw new Error('k6 module ' + spec + ' has no stand-in in scripts/k6/harness.mjs; add one');
    return { url: 'data:text/javascript,' + encodeURIComponent(STUBS[spec]), shortCircuit: true };
  }
  const r = await next(spec, ctx);
  // Give every k6 module of one script instance (setup VU, VU 1) its own module state.
  const q = ctx.parentURL && ctx.parentURL.includes('?') ? ctx.parentURL.slice(ctx.parentURL.indexOf('?')) : '';
  if (q && r.url.startsWith(K6DIR) && !r.url.includes('?')) return { ...r, url: r.url + q };
  return r;
}
export async function load(url, ctx, next) {
  const bare = url.split('?')[0];
  if (bare.startsWith(K6DIR) && bare.endsWith('.js')) {
    const { readFileSync } = await import('node:fs');
    const { fileURLToPath } = await import('node:url');
    return { format: 'module', source: readFileSync(fileURLToPath(bare), 'utf8'), shortCircuit: true };
  }
  return next(url, ctx);
}`;
register('data:text/javascript,' + encodeURIComponent(hooks));

function grpcStatus() {
  return {
    StatusOK: 0, StatusCanceled: 1, StatusUnknown: 2, StatusInvalidArgument: 3, StatusDeadlineExceeded: 4,
    StatusNotFound: 5, StatusAlreadyExists: 6, StatusPermissionDenied: 7, StatusResourceExhausted: 8,
    StatusFailedPrecondition: 9, StatusAborted: 10, StatusOutOfRange: 11, StatusUnimplemented: 12,
    StatusInternal: 13, StatusUnavailable: 14, StatusDataLoss: 15, StatusUnauthenticated: 16,
  };
}

// ---------------------------------------------------------------------------------------------
// Harness state
// ---------------------------------------------------------------------------------------------

let phase = 'init'; // init | setup | vu | teardown
let where = 'init';
const calls = {}; // method -> count
const checkResults = { pass: 0, fail: 0, failed: new Set(), byPhase: { setup: 0, vu: 0, teardown: 0 } };
let sleeps = 0;

// ---------------------------------------------------------------------------------------------
// Proto helpers
// ---------------------------------------------------------------------------------------------

const jsonName = (n) => n.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
const INT32 = new Set(['int32', 'sint32', 'sfixed32']);
const UINT32 = new Set(['uint32', 'fixed32']);
const INT64 = new Set(['int64', 'sint64', 'sfixed64']);
const UINT64 = new Set(['uint64', 'fixed64']);
const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$|^[A-Za-z0-9_-]*={0,2}$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

function b64len(s) {
  const t = s.replace(/=+$/, '');
  return Math.floor((t.length * 3) / 4);
}

// Documented request limits (proto comments); checked on top of the type-level validation.
const LIMITS = {
  'dispatch.v1.TaskSpec': (v, p) => {
    const bk = v.business_key ?? v.businessKey;
    if (typeof bk !== 'string' || bk.length === 0) err(`${where}: ${p}.business_key is required`);
    else if (Buffer.byteLength(bk, 'utf8') > 256) err(`${where}: ${p}.business_key longer than 256 bytes`);
    const tt = v.task_type ?? v.taskType;
    if (typeof tt !== 'string' || !/^[a-z0-9._-]{1,128}$/.test(tt)) err(`${where}: ${p}.task_type must be 1..=128 of [a-z0-9._-], got ${JSON.stringify(tt)}`);
    else if (!knownTaskTypes.includes(tt)) err(`${where}: ${p}.task_type ${JSON.stringify(tt)} has no handler in the processor's registry (${knownTaskTypes.join(', ')}): every such task is dead-lettered`);
    const pl = v.payload;
    if (typeof pl === 'string' && b64len(pl) > 262144) err(`${where}: ${p}.payload larger than 262144 bytes`);
    if (tt === 'simulate' && typeof pl === 'string' && Buffer.from(pl, 'base64').toString('utf8').trim() !== '') {
      // The simulate handler fails a payload that is not a JSON plan permanently.
      let plan;
      try { plan = JSON.parse(Buffer.from(pl, 'base64').toString('utf8')); } catch (e) { plan = undefined; }
      if (plan === null || typeof plan !== 'object' || Array.isArray(plan)) err(`${where}: ${p}.payload of a simulate task must be empty or a JSON object (the handler's plan)`);
    }
    const ik = v.idempotency_key ?? v.idempotencyKey;
    if (ik !== undefined && ik !== '' && !/^[\x20-\x7e]{1,128}$/.test(ik)) err(`${where}: ${p}.idempotency_key must be 1..=128 printable ASCII`);
  },
  'dispatch.v1.SubmitTasksRequest': (v, p) => {
    const n = (v.tasks || []).length;
    if (n < 1 || n > 1000) err(`${where}: ${p}.tasks must hold 1..=1000 items, got ${n}`);
  },
  'dispatch.v1.BatchGetTasksRequest': (v, p) => {
    const n = (v.task_ids ?? v.taskIds ?? []).length;
    if (n < 1 || n > 100) err(`${where}: ${p}.task_ids must hold 1..=100 ids, got ${n}`);
  },
  'dispatch.v1.GetTaskRequest': (v, p) => {
    const id = v.task_id ?? v.taskId;
    if (typeof id !== 'string' || id === '') err(`${where}: ${p}.task_id is required`);
  },
  'dispatch.v1.WatchTaskRequest': (v, p) => {
    const id = v.task_id ?? v.taskId;
    if (typeof id !== 'string' || id === '') err(`${where}: ${p}.task_id is required`);
  },
  'dispatch.v1.CancelTaskRequest': (v, p) => {
    const id = v.task_id ?? v.taskId;
    if (typeof id !== 'string' || id === '') err(`${where}: ${p}.task_id is required`);
    const r = v.reason;
    if (typeof r === 'string' && Buffer.byteLength(r, 'utf8') > 512) err(`${where}: ${p}.reason longer than 512 bytes`);
  },
  'dispatch.v1.ListTasksRequest': (v, p) => {
    const n = v.page_size ?? v.pageSize;
    if (n !== undefined && (Number(n) < 0 || Number(n) > 500)) err(`${where}: ${p}.page_size must be 0..=500, got ${n}`);
  },
};

function checkScalar(type, v, p) {
  const bad = (what) => err(`${where}: ${p}: expected ${what} for ${type}, got ${JSON.stringify(v)}`);
  if (type === 'string') return typeof v === 'string' || bad('a string');
  if (type === 'bool') return typeof v === 'boolean' || bad('a boolean');
  if (type === 'bytes') return (typeof v === 'string' && B64.test(v)) || bad('a base64 string');
  if (type === 'double' || type === 'float') {
    return typeof v === 'number' || ['NaN', 'Infinity', '-Infinity'].includes(v) || bad('a number');
  }
  const isIntStr = typeof v === 'string' && /^-?\d+$/.test(v);
  const n = typeof v === 'number' ? v : isIntStr ? Number(v) : NaN;
  if (!(Number.isInteger(n) || isIntStr)) return bad('an integer (number or decimal string)');
  if (INT32.has(type) && (n < -2147483648 || n > 2147483647)) return bad('an int32');
  if (UINT32.has(type) && (n < 0 || n > 4294967295)) return bad('a uint32');
  if (UINT64.has(type) && (n < 0 || (typeof v === 'string' && v.startsWith('-')))) return bad('a uint64');
  if ((INT64.has(type) || UINT64.has(type)) && typeof v === 'number' && !Number.isSafeInteger(v)) {
    return bad('a 64-bit integer as a string (number loses precision)');
  }
  return true;
}

function checkValue(type, v, p, mode) {
  if (schema.enums[type]) {
    const names = schema.enums[type].map((e) => e.name);
    const nums = schema.enums[type].map((e) => e.number);
    if (typeof v === 'string' ? !names.includes(v) : !(Number.isInteger(v) && (mode === 'request' || nums.includes(v)))) {
      err(`${where}: ${p}: ${JSON.stringify(v)} is not a value of enum ${type} (${names.join(', ')})`);
    }
    return;
  }
  if (schema.messages[type]) return checkMessage(type, v, p, mode);
  if (type === 'google.protobuf.Timestamp') {
    if (typeof v !== 'string' || !RFC3339.test(v)) err(`${where}: ${p}: expected an RFC 3339 timestamp string, got ${JSON.stringify(v)}`);
    return;
  }
  if (type.startsWith('google.protobuf.')) return; // other well-known types: not used here
  if (/^(double|float|u?int(32|64)|s?fixed(32|64)|sint(32|64)|bool|string|bytes)$/.test(type)) return checkScalar(type, v, p);
  err(`${where}: ${p}: unknown type ${type}`);
}

function checkMessage(type, v, p, mode) {
  const m = schema.messages[type];
  if (!m) return err(`${where}: ${p}: unknown message ${type}`);
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    return err(`${where}: ${p}: expected an object for ${type}, got ${JSON.stringify(v)}`);
  }
  const byName = {};
  for (const [fname, f] of Object.entries(m.fields)) {
    byName[jsonName(fname)] = [fname, f];
    if (mode === 'request') byName[fname] = [fname, f];
  }
  const oneofSeen = {};
  for (const [k, val] of Object.entries(v)) {
    const hit = byName[k];
    if (!hit) {
      const names = Object.keys(m.fields).join(', ');
      err(`${where}: ${p}: unknown field '${k}' for ${type} (fields: ${names})`);
      continue;
    }
    const [fname, f] = hit;
    const fp = `${p}.${fname}`;
    if (val === null || val === undefined) continue; // null means unset in the JSON mapping
    if (f.oneof) {
      if (oneofSeen[f.oneof]) err(`${where}: ${p}: oneof ${f.oneof} has both ${oneofSeen[f.oneof]} and ${fname} set`);
      oneofSeen[f.oneof] = fname;
    }
    if (f.type === 'map') {
      if (typeof val !== 'object' || Array.isArray(val)) { err(`${where}: ${fp}: expected an object (map)`); continue; }
      for (const [mk, mv] of Object.entries(val)) checkValue(f.value, mv, `${fp}[${mk}]`, mode);
    } else if (f.repeated) {
      if (!Array.isArray(val)) { err(`${where}: ${fp}: expected an array, got ${JSON.stringify(val)}`); continue; }
      val.forEach((x, i) => checkValue(f.type, x, `${fp}[${i}]`, mode));
    } else {
      checkValue(f.type, val, fp, mode);
    }
  }
  if (mode === 'request' && LIMITS[type]) LIMITS[type](v, p);
}

// ---------------------------------------------------------------------------------------------
// Fake responses (protobuf JSON mapping with EmitUnpopulated, as k6 returns them)
// ---------------------------------------------------------------------------------------------

function defaultMessage(type) {
  const m = schema.messages[type];
  const out = {};
  for (const [fname, f] of Object.entries(m.fields)) {
    if (f.oneof) continue;
    const k = jsonName(fname);
    if (f.type === 'map') out[k] = {};
    else if (f.repeated) out[k] = [];
    else if (schema.enums[f.type]) out[k] = schema.enums[f.type][0].name;
    else if (schema.messages[f.type] || f.type.startsWith('google.protobuf.')) out[k] = null;
    else if (INT64.has(f.type) || UINT64.has(f.type)) out[k] = '0';
    else if (f.type === 'bool') out[k] = false;
    else if (f.type === 'string' || f.type === 'bytes') out[k] = '';
    else out[k] = 0;
  }
  return out;
}

let nextId = 0;
const issued = new Map(); // task id -> { polled: bool, spec }

function fakeTaskId(spec) {
  nextId++;
  const id = `0190f0e0-0000-7000-8000-${String(nextId).padStart(12, '0')}`;
  issued.set(id, { polled: false, spec: spec || {} });
  return id;
}

function fakeTask(id, state) {
  const spec = issued.get(id).spec;
  return Object.assign(defaultMessage('dispatch.v1.Task'), {
    taskId: id, tenant: 'check', businessKey: spec.business_key ?? spec.businessKey ?? 'k',
    taskType: spec.task_type ?? spec.taskType ?? 'noop', state, version: '1', maxAttempts: 4,
  });
}

function fakeAccepted(spec) {
  return Object.assign(defaultMessage('dispatch.v1.SubmitTaskResponse'), {
    taskId: fakeTaskId(spec), acceptedVia: 'ACCEPTED_VIA_KAFKA', topic: 'dispatch.tasks.default',
    partition: 1, offset: String(nextId), version: '1',
  });
}

function respond(method, req) {
  const ok = (message) => ({ status: 0, message, headers: {}, trailers: {}, error: null });
  const fail = (code, msg) => ({ status: code, message: null, headers: {}, trailers: {}, error: { code, message: msg, details: [] } });
  switch (method) {
    case 'dispatch.v1.TaskService/SubmitTask':
      return ok(fakeAccepted(req.task));
    case 'dispatch.v1.TaskService/SubmitTasks':
      return ok({ results: (req.tasks || []).map((t, i) => ({ index: i, accepted: fakeAccepted(t) })) });
    case 'dispatch.v1.TaskService/CancelTask': {
      const id = req.task_id ?? req.taskId;
      if (!issued.has(id)) return fail(5, `task ${id} not found (not an id the gateway returned)`);
      return ok({ taskId: id, accepted: true, state: 'TASK_STATE_SCHEDULED' });
    }
    case 'dispatch.v1.TaskQueryService/BatchGetTasks': {
      const ids = req.task_ids ?? req.taskIds ?? [];
      return ok({
        tasks: ids.filter((id) => issued.has(id)).map((id) => fakeTask(id, 'TASK_STATE_SUCCEEDED')),
        notFound: ids.filter((id) => !issued.has(id)),
      });
    }
    case 'dispatch.v1.TaskQueryService/ListTasks': {
      const key = req.business_key ?? req.businessKey;
      const size = Number(req.page_size ?? req.pageSize ?? 0) || 50;
      const ids = [...issued.keys()].filter((id) => !key || fakeTask(id, 'TASK_STATE_SUCCEEDED').businessKey === key);
      return ok({ tasks: ids.slice(0, size).map((id) => fakeTask(id, 'TASK_STATE_SUCCEEDED')), nextPageToken: '' });
    }
    case 'dispatch.v1.TaskQueryService/GetTask': {
      const id = req.task_id ?? req.taskId;
      const st = issued.get(id);
      if (!st) return fail(5, `task ${id} not found (not an id the gateway returned)`);
      const minVersion = req.min_version ?? req.minVersion;
      // Read-your-writes: the first lookup with a version token is "not visible yet", to
      // exercise the caller's polling path.
      if (minVersion !== undefined && minVersion !== '0' && minVersion !== 0 && !st.polled) {
        st.polled = true;
        return fail(9, 'not visible yet');
      }
      const task = fakeTask(id, 'TASK_STATE_PENDING');
      return ok(Object.assign(defaultMessage('dispatch.v1.GetTaskResponse'), { task, servedFrom: 'SERVED_FROM_L1' }));
    }
    default: {
      const rpc = lookupRpc(method);
      return ok(defaultMessage(rpc.output));
    }
  }
}

function lookupRpc(method) {
  const i = method.lastIndexOf('/');
  const svc = schema.services[method.slice(0, i)];
  return svc && svc.rpcs[method.slice(i + 1)];
}

// ---------------------------------------------------------------------------------------------
// k6 stand-ins
// ---------------------------------------------------------------------------------------------

function resolveProto(importPaths, file) {
  for (const ip of importPaths) {
    const abs = path.resolve(scriptDir, ip, file);
    if (existsSync(abs) && statSync(abs).isFile()) return { abs, ip: path.resolve(scriptDir, ip) };
  }
  return null;
}

class Client {
  constructor() {
    this.services = new Set();
    this.connected = false;
    this.addr = null;
  }

  load(importPaths, ...files) {
    if (phase !== 'init') err(`${where}: client.load() called outside the init context (k6 throws)`);
    let paths = importPaths == null ? [] : importPaths;
    if (!Array.isArray(paths)) { err(`${where}: client.load(): importPaths must be an array or null`); paths = [String(paths)]; }
    if (paths.length === 0) paths = ['.'];
    if (files.length === 0) err(`${where}: client.load() without proto files`);
    for (const file of files) {
      const found = resolveProto(paths, file);
      if (!found) {
        err(`${where}: client.load(): '${file}' not found under import paths ${JSON.stringify(paths)} (relative to ${path.relative(process.cwd(), scriptDir) || '.'})`);
        continue;
      }
      if (found.ip !== protoRoot) {
        err(`${where}: client.load(): '${file}' resolved via ${found.ip}, not the checked proto root ${protoRoot}`);
        continue;
      }
      // k6 registers the services of the loaded files and of their transitive imports.
      const seen = new Set();
      const walk = (rel, from) => {
        if (seen.has(rel)) return;
        seen.add(rel);
        if (rel.startsWith('google/protobuf/')) return; // built into k6's proto parser
        const f = schema.files[rel];
        if (!f) { err(`${where}: client.load(): '${rel}' (imported by ${from}) not found under ${protoRoot}`); return; }
        f.services.forEach((s) => this.services.add(s));
        f.imports.forEach((imp) => walk(imp, rel));
      };
      walk(file.replace(/^\.\//, ''), 'client.load');
    }
    return [];
  }

  connect(addr, params) {
    if (phase === 'init') err(`${where}: client.connect() in the init context (k6 throws; connect per VU)`);
    if (this.connected) err(`${where}: client.connect() on an already connected client (connect once per VU)`);
    if (typeof addr !== 'string' || !/^[^\s:/]+:\d+$/.test(addr)) err(`${where}: client.connect(): address must be host:port, got ${JSON.stringify(addr)}`);
    if (params !== undefined) {
      const allowed = ['plaintext', 'timeout', 'reflect', 'reflectMetadata', 'maxReceiveSize', 'maxSendSize', 'tls'];
      for (const k of Object.keys(params)) if (!allowed.includes(k)) err(`${where}: client.connect(): unknown param '${k}'`);
      if ('plaintext' in params && typeof params.plaintext !== 'boolean') err(`${where}: client.connect(): plaintext must be a boolean`);
    }
    this.connected = true;
    this.addr = addr;
    return true;
  }

  invoke(url, request, params) {
    if (phase === 'init') err(`${where}: client.invoke() in the init context`);
    if (!this.connected) { err(`${where}: client.invoke('${url}') before client.connect()`); throw new Error('no connection'); }
    const method = String(url).replace(/^\//, '');
    calls[method] = (calls[method] || 0) + 1;
    const i = method.lastIndexOf('/');
    const svc = method.slice(0, i);
    const rpc = lookupRpc(method);
    if (!rpc) { err(`${where}: invoke('${url}'): no such rpc in ${protoRoot}`); throw new Error(`method ${url} not found`); }
    if (!this.services.has(svc)) { err(`${where}: invoke('${url}'): service ${svc} is not loaded on this client (client.load it)`); throw new Error(`method ${url} not found in file descriptors`); }
    if (rpc.client_streaming || rpc.server_streaming) err(`${where}: invoke('${url}'): streaming rpc; use grpc.Stream`);
    const before = errors.length;
    checkMessage(rpc.input, request, `${method.slice(i + 1)} request`, 'request');
    checkCallParams(`invoke('${url}')`, params, ['metadata', 'tags', 'timeout', 'discardResponseMessage', 'authority']);
    const res = respond(method, request);
    if (res.message) {
      const w = where;
      where = `${w} [harness fake response]`;
      checkMessage(rpc.output, res.message, `${method.slice(i + 1)} response`, 'response');
      where = w;
    }
    if (errors.length > before) return { status: 3, message: null, headers: {}, trailers: {}, error: { code: 3, message: 'invalid request' } };
    return res;
  }

  close() {
    this.connected = false;
  }
}

// Server streams in flight: each resolves once its fake server has delivered every event.
const pendingStreams = [];

async function drainStreams() {
  while (pendingStreams.length > 0) await Promise.all(pendingStreams.splice(0));
}

const STREAM_EVENTS = ['data', 'error', 'end'];

// The fake server of a streaming rpc: WatchTask streams PENDING, RUNNING, SUCCEEDED for a task
// the gateway returned (NOT_FOUND otherwise), then ends; other streams end at once.
function streamEvents(method, req) {
  if (method !== 'dispatch.v1.TaskQueryService/WatchTask') return [['end']];
  const id = req.task_id ?? req.taskId;
  if (!issued.has(id)) return [['error', { code: 5, message: `task ${id} not found (not an id the gateway returned)`, details: [] }]];
  const events = ['TASK_STATE_PENDING', 'TASK_STATE_RUNNING', 'TASK_STATE_SUCCEEDED'].map((state, i) => {
    const task = Object.assign(fakeTask(id, state), { version: String(i + 1) });
    return ['data', { taskId: id, state, version: String(i + 1), occurredAt: new Date().toISOString(), task }, { ts: Date.now() }];
  });
  return [...events, ['end']];
}

class Stream {
  constructor(client, url, params) {
    this.handlers = { data: [], error: [], end: [] };
    this.requests = [];
    this.ended = false;
    this.served = false;
    this.where = where;
    if (phase === 'init') err(`${where}: new grpc.Stream() in the init context`);
    if (!(client instanceof Client)) { err(`${where}: new grpc.Stream(): first argument must be a grpc.Client`); throw new Error('not a client'); }
    if (!client.connected) { err(`${where}: new grpc.Stream('${url}') before client.connect()`); throw new Error('no connection'); }
    const method = String(url).replace(/^\//, '');
    calls[method] = (calls[method] || 0) + 1;
    const i = method.lastIndexOf('/');
    const rpc = lookupRpc(method);
    if (!rpc) { err(`${where}: new grpc.Stream('${url}'): no such rpc in ${protoRoot}`); throw new Error(`method ${url} not found`); }
    if (!client.services.has(method.slice(0, i))) { err(`${where}: new grpc.Stream('${url}'): service ${method.slice(0, i)} is not loaded on this client (client.load it)`); throw new Error(`method ${url} not found in file descriptors`); }
    if (!rpc.client_streaming && !rpc.server_streaming) err(`${where}: new grpc.Stream('${url}'): unary rpc; use client.invoke`);
    checkCallParams(`new grpc.Stream('${url}')`, params, ['metadata', 'tags', 'timeout', 'discardResponseMessage', 'authority']);
    this.method = method;
    this.name = method.slice(i + 1);
    this.rpc = rpc;
  }

  on(event, handler) {
    if (!STREAM_EVENTS.includes(event)) err(`${where}: stream.on('${event}'): unknown event (${STREAM_EVENTS.join(', ')})`);
    else if (typeof handler !== 'function') err(`${where}: stream.on('${event}'): handler must be a function`);
    else this.handlers[event].push(handler);
  }

  write(message) {
    if (this.ended) err(`${where}: stream.write() after stream.end()`);
    if (!this.rpc.client_streaming && this.requests.length > 0) err(`${where}: ${this.name} is server-streaming: write one request`);
    checkMessage(this.rpc.input, message, `${this.name} request`, 'request');
    this.requests.push(message);
    // A server stream answers its one request whether or not the client half-closes.
    if (!this.rpc.client_streaming) this.serve();
  }

  end() {
    if (this.ended) err(`${where}: stream.end() called twice`);
    this.ended = true;
    if (this.requests.length === 0) err(`${where}: ${this.name}: stream.end() without a request written`);
    this.serve();
  }

  serve() {
    if (this.served) return;
    this.served = true;
    const events = streamEvents(this.method, this.requests[0] || {});
    // k6 delivers stream events from its event loop, after the code that opened the stream ran.
    pendingStreams.push(new Promise((resolve) => setImmediate(() => {
      const w = where;
      where = `${this.where} [${this.name} stream events]`;
      for (const [event, ...args] of events) {
        if (event === 'data') checkMessage(this.rpc.output, args[0], `${this.name} response`, 'response');
        for (const h of this.handlers[event]) {
          try { h(...args); } catch (e) { err(`${where}: '${event}' handler threw: ${e.message}`); }
        }
      }
      where = w;
      resolve();
    })));
  }
}

function checkCallParams(what, params, allowed) {
  const p = params || {};
  for (const k of Object.keys(p)) if (!allowed.includes(k)) err(`${where}: ${what}: unknown param '${k}'`);
  const auth = p.metadata && p.metadata.authorization;
  if (typeof auth !== 'string' || !/^Bearer \S+$/.test(auth)) err(`${where}: ${what}: metadata.authorization must be 'Bearer <api key>', got ${JSON.stringify(auth)}`);
  if (p.metadata) for (const [k, v] of Object.entries(p.metadata)) if (k !== k.toLowerCase() || typeof v !== 'string') err(`${where}: ${what}: metadata keys must be lowercase with string values (${k})`);
}

class Metric {
  constructor(name, isTime) {
    if (phase !== 'init') err(`${where}: custom metric '${name}' created outside the init context`);
    if (typeof name !== 'string' || !/^[A-Za-z0-9_.!?/&#()<>%-]{1,128}$/.test(name)) err(`${where}: invalid metric name ${JSON.stringify(name)}`);
    if (isTime !== undefined && typeof isTime !== 'boolean') err(`${where}: metric '${name}': second argument must be a boolean`);
    this.name = name;
  }
  add(v) {
    if (typeof v !== 'number' && typeof v !== 'boolean') err(`${where}: metric '${this.name}'.add(${JSON.stringify(v)}): value must be a number or boolean`);
  }
}

globalThis.__k6h = {
  k6: {
    check(val, sets) {
      let all = true;
      for (const [name, fn] of Object.entries(sets || {})) {
        let r;
        try { r = typeof fn === 'function' ? fn(val) : fn; } catch (e) { r = false; err(`${where}: check '${name}' threw: ${e.message}`); }
        if (r) checkResults.pass++; else { checkResults.fail++; checkResults.failed.add(name); all = false; }
        checkResults.byPhase[phase] = (checkResults.byPhase[phase] || 0) + 1;
      }
      return all;
    },
    sleep(s) { if (typeof s !== 'number' || s < 0) err(`${where}: sleep(${JSON.stringify(s)})`); sleeps++; },
    group(_name, fn) { return fn(); },
    fail(msg) { throw new Error(msg); },
  },
  grpc: Object.assign({ Client, Stream }, grpcStatus()),
  encoding: {
    b64encode: (v, enc) => Buffer.from(typeof v === 'string' ? v : new Uint8Array(v)).toString(enc === 'url' || enc === 'rawurl' ? 'base64url' : 'base64'),
    b64decode: (v, _enc, fmt) => { const b = Buffer.from(v, 'base64'); return fmt === 's' ? b.toString('utf8') : b.buffer; },
  },
  metrics: {
    Counter: class extends Metric {}, Rate: class extends Metric {}, Trend: class extends Metric {}, Gauge: class extends Metric {},
  },
};

// ---------------------------------------------------------------------------------------------
// Options validation
// ---------------------------------------------------------------------------------------------

const DURATION = /^(\d+(\.\d+)?(ms|s|m|h))+$/;
const THRESHOLD = /^\s*(avg|min|max|med|count|rate|value|p\(\d+(\.\d+)?\))\s*(<=|>=|===|==|!=|<|>)\s*-?\d+(\.\d+)?\s*$/;

function thresholdExprs(v) {
  const list = Array.isArray(v) ? v : [v];
  return list.map((t) => (t && typeof t === 'object' ? t.threshold : t));
}

function validateOptions(mod) {
  const o = mod.options;
  if (!o || typeof o !== 'object') return err('script does not export `options`');
  try {
    const copy = JSON.parse(JSON.stringify(o));
    if (JSON.stringify(copy) !== JSON.stringify(o)) err('options is not plain JSON');
  } catch (e) {
    err(`options is not JSON-serialisable: ${e.message}`);
  }
  const sc = o.scenarios;
  if (!sc || typeof sc !== 'object' || Object.keys(sc).length === 0) err('options.scenarios is missing or empty');
  for (const [name, s] of Object.entries(sc || {})) {
    const w = `options.scenarios.${name}`;
    if (!/^[0-9A-Za-z_-]+$/.test(name)) err(`${w}: invalid scenario name`);
    if (s.executor !== 'constant-arrival-rate') err(`${w}: executor must be 'constant-arrival-rate', got ${JSON.stringify(s.executor)}`);
    if (!Number.isInteger(s.rate) || s.rate < 1) err(`${w}.rate must be a positive integer, got ${JSON.stringify(s.rate)}`);
    if (typeof s.timeUnit !== 'string' || !DURATION.test(s.timeUnit)) err(`${w}.timeUnit must be a duration, got ${JSON.stringify(s.timeUnit)}`);
    if (typeof s.duration !== 'string' || !DURATION.test(s.duration)) err(`${w}.duration must be a duration, got ${JSON.stringify(s.duration)}`);
    if (!Number.isInteger(s.preAllocatedVUs) || s.preAllocatedVUs < 1) err(`${w}.preAllocatedVUs must be a positive integer`);
    if (!Number.isInteger(s.maxVUs) || s.maxVUs < s.preAllocatedVUs) err(`${w}.maxVUs must be an integer >= preAllocatedVUs`);
    const exec = s.exec || 'default';
    if (typeof mod[exec] !== 'function') err(`${w}.exec: the script exports no function '${exec}'`);
  }
  const th = o.thresholds;
  if (!th || typeof th !== 'object') return err('options.thresholds is missing');
  let haveP95 = false, haveP99 = false, haveChecks = false, haveDropped = false;
  for (const [metric, v] of Object.entries(th)) {
    const m = /^([A-Za-z0-9_.]+)(\{(.*)\})?$/.exec(metric);
    if (!m) { err(`options.thresholds: bad metric key '${metric}'`); continue; }
    const tag = m[3];
    if (tag !== undefined) {
      const tm = /^([A-Za-z0-9_]+):(.+)$/.exec(tag);
      if (!tm) err(`options.thresholds: bad tag filter in '${metric}'`);
      else if (tm[1] === 'scenario' && !(sc && tm[2] in sc)) err(`options.thresholds: '${metric}' names unknown scenario '${tm[2]}'`);
    }
    for (const e of thresholdExprs(v)) {
      if (typeof e !== 'string' || !THRESHOLD.test(e)) { err(`options.thresholds['${metric}']: bad expression ${JSON.stringify(e)}`); continue; }
      if (m[1] === 'grpc_req_duration' && /^\s*p\(95\)\s*</.test(e)) haveP95 = true;
      if (m[1] === 'grpc_req_duration' && /^\s*p\(99\)\s*</.test(e)) haveP99 = true;
      const cm = /^\s*rate\s*>=?\s*([\d.]+)\s*$/.exec(e);
      if (m[1] === 'checks' && cm && Number(cm[1]) >= 0.99) haveChecks = true;
      if (metric === 'dropped_iterations' && /^\s*count\s*==\s*0\s*$/.test(e)) haveDropped = true;
    }
  }
  if (!haveP95) err("options.thresholds: no grpc_req_duration 'p(95)<...' threshold");
  if (!haveP99) err("options.thresholds: no grpc_req_duration 'p(99)<...' threshold");
  if (!haveChecks) err("options.thresholds: no checks 'rate>0.99' threshold");
  if (!haveDropped) err("options.thresholds: no dropped_iterations 'count==0' threshold");
}

// ---------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------

const ENV = {
  API_KEY: 'check-api-key', HOT_SET: '3', SETUP_TIMEOUT_S: '5', BATCH: '4', RATE: '10',
  PRE_VUS: '5', MAX_VUS: '10', DURATION: '1s', PAYLOAD_BYTES: '64',
};
// TASK_TYPE is taken from the caller, so `TASK_TYPE=x scripts/check-k6.sh` checks a run with x.
for (const k of ['TASK_TYPE']) if (process.env[k] !== undefined) ENV[k] = process.env[k];
globalThis.__ENV = ENV;
globalThis.__VU = 0;
globalThis.__ITER = 0;

const rel = path.relative(process.cwd(), scriptPath);
const ITERATIONS = 3;

async function main() {
  // Instance used by k6 for options and setup()/teardown() (__VU == 0).
  phase = 'init'; where = `${rel} (init)`;
  let mod;
  try {
    mod = await import(pathToFileURL(scriptPath).href + '?instance=setup');
  } catch (e) {
    err(`${rel}: init failed: ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e}`);
    return;
  }
  where = `${rel} (options)`;
  validateOptions(mod);

  let data;
  if (typeof mod.setup === 'function') {
    phase = 'setup'; where = `${rel} setup()`;
    try {
      data = mod.setup();
      await drainStreams();
      data = data === undefined ? undefined : JSON.parse(JSON.stringify(data));
    } catch (e) {
      err(`${where} threw: ${e.message}`);
      return;
    }
  }

  // A fresh instance, as each k6 VU runs the init code itself.
  phase = 'init'; where = `${rel} (VU init)`;
  globalThis.__VU = 1;
  let vu;
  try {
    vu = await import(pathToFileURL(scriptPath).href + '?instance=vu1');
  } catch (e) {
    err(`${rel}: VU init failed: ${e.message}`);
    return;
  }
  phase = 'vu';
  const scenarios = (mod.options && mod.options.scenarios) || {};
  for (const [name, s] of Object.entries(scenarios)) {
    const exec = s.exec || 'default';
    if (typeof vu[exec] !== 'function') continue;
    const before = checkResults.pass + checkResults.fail;
    for (let it = 0; it < ITERATIONS; it++) {
      globalThis.__ITER = it;
      where = `${rel} scenario '${name}' ${exec}() iteration ${it}`;
      try {
        vu[exec](data);
        await drainStreams();
      } catch (e) {
        err(`${where} threw: ${e.message}`);
        break;
      }
    }
    if (checkResults.pass + checkResults.fail === before) err(`${rel} scenario '${name}': ${exec}() made no check() calls (the checks threshold would have no data)`);
  }

  if (typeof mod.teardown === 'function') {
    phase = 'teardown'; where = `${rel} teardown()`;
    try { mod.teardown(data); await drainStreams(); } catch (e) { err(`${where} threw: ${e.message}`); }
  }
  if (checkResults.fail > 0) {
    err(`${rel}: ${checkResults.fail} check(s) failed against well-formed OK responses: ${[...checkResults.failed].join('; ')}`);
  }
}

await main();
if (errors.length) {
  console.error(`FAIL ${rel}`);
  const unique = [...new Set(errors)];
  const MAX = 15;
  for (const e of unique.slice(0, MAX)) console.error(`  - ${e}`);
  if (unique.length > MAX) console.error(`  ... and ${unique.length - MAX} more`);
  process.exit(1);
}
const summary = Object.entries(calls).map(([m, n]) => `${m.split('/')[1]}x${n}`).join(', ');
console.log(`  ok ${rel}: ${Object.keys(calls).length} rpc(s) [${summary}], ${checkResults.pass} checks passed`);
