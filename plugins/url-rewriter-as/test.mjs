// Checks a built url_rewriter_as.wasm in Node, without the host: runs the
// ABI 2 lifecycle and stage calls against an independent JavaScript encoder
// of the expected answers (docs/ABI.md §7), byte for byte.
//
//   node test.mjs PLUGIN.wasm
import { readFileSync } from "node:fs";

const path = process.argv[2];
if (!path) {
  console.error("usage: node test.mjs PLUGIN.wasm");
  process.exit(2);
}
const bytes = readFileSync(path);

// ---- postcard, the JavaScript side --------------------------------------
function varint(value) {
  let v = BigInt(value);
  const out = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}
const utf8 = (s) => [...Buffer.from(s, "utf8")];
const str = (s) => [...varint(utf8(s).length), ...utf8(s)];
const slice = (b) => [...varint(b.length), ...b];
function u32s(values) {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeUInt32LE(v, i * 4));
  return [...b];
}
function u64s(values) {
  const b = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), i * 8));
  return [...b];
}
/** A text column: starts empty, offsets, data. */
function textColumn(values) {
  const offsets = [0];
  const data = [];
  for (const v of values) {
    data.push(...utf8(v));
    offsets.push(data.length);
  }
  return [...slice([]), ...slice(u32s(offsets)), ...slice(data)];
}
/** A list column with one item per channel. */
function listColumn(values) {
  return [...slice(u32s(values.map((_, i) => i).concat(values.length))), ...textColumn(values).slice(1)];
}
function stageInput({ ids, urls, fields = 0x80, extra = {} }) {
  const n = ids.length;
  const columns = [];
  for (let field = 0; field < 14; field++) {
    if (!(fields & (1 << field))) continue;
    if (field === 7) columns.push(...textColumn(urls));
    else if (field >= 12) columns.push(...listColumn(extra[field] ?? ids.map(() => "")));
    else columns.push(...textColumn(extra[field] ?? ids.map(() => "")));
  }
  const count = [...Array(14).keys()].filter((f) => fields & (1 << f)).length;
  return [
    ...varint(3), 0, ...varint(fields), ...varint(n),
    ...slice(u64s(ids)), ...slice(u32s(ids.map(() => 0))),
    ...varint(count), ...columns,
  ];
}
function expectedAnswer(base, ids, urls) {
  const prefix = base.replace(/\/+$/, "");
  if (!prefix) return [3];
  const indices = u32s(ids.map((_, i) => i));
  const col = (values) => {
    const offsets = [0];
    const data = [];
    for (const v of values) {
      data.push(...utf8(v));
      offsets.push(data.length);
    }
    return [...slice(indices), ...slice(u32s(offsets)), ...slice(data)];
  };
  return [
    4,
    1, 7, ...col(ids.map((id) => `${prefix}/stream/${BigInt(id)}`)),
    0,
    1, ...str("x-upstream-url"), ...col(urls),
  ];
}

// ---- the plugin --------------------------------------------------------------
let memory;
let pushed = [];
const logs = [];
const { instance } = await WebAssembly.instantiate(bytes, {
  host: {
    log: (level, ptr, len) => logs.push(Buffer.from(memory.buffer, ptr, len).toString()),
    write_channels: (ptr, len) => {
      pushed.push(Buffer.from(new Uint8Array(memory.buffer, ptr, len)));
      return 0;
    },
  },
});
const x = instance.exports;
memory = x.memory;
const A = x.m3u_arena_ptr();
const C = x.m3u_arena_capacity();
const arena = () => new Uint8Array(memory.buffer, A, C);

let failures = 0;
function check(name, ok, detail = "") {
  if (!ok) failures++;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok ? "" : " " + detail}`);
}

const info = Buffer.from(arena().slice(0, x.m3u_plugin_info()));
const expectedInfo = Buffer.from([
  ...str("url_rewriter_as"), ...str("0.1.0"),
  ...str("Rewrites stream URLs to {base_url}/stream/{id}"), ...str(""),
  0x10, ...varint(0x80), 0, ...varint(4 << 20), 4, 1, 0,
]);
check("PluginInfo", info.equals(expectedInfo), info.toString("hex"));
check("m3u_init", x.m3u_init() === 0);

function startRun(base) {
  const context = [0, ...varint(0), ...str("p"), ...str(base)];
  arena().set(context);
  return x.m3u_check_memory_pressure(0, context.length);
}
function run(input, stage = 4) {
  arena().set(input);
  pushed = [];
  const r = x.m3u_execute_stage(stage, input.length);
  if (r > 0) return Buffer.from(arena().slice(input.length, input.length + r));
  if (r === 0) return Buffer.concat(pushed);
  return r;
}
function answers(name, base, ids, urls, options = {}) {
  const got = run(stageInput({ ids, urls, ...options }));
  const want = Buffer.from(expectedAnswer(base, ids, options.fields === 0 ? ids.map(() => "") : urls));
  check(name, Buffer.isBuffer(got) && got.equals(want), Buffer.isBuffer(got) ? `${got.length} vs ${want.length} bytes` : `status ${got}`);
}

const urls = (n) => [...Array(n).keys()].map((i) => `http://up/${i}/ä€😀`);
check("fresh instance: no base URL, KeepAll", run(stageInput({ ids: [1], urls: ["u"] }))?.[0] === 3);
check("accepts every level", [0, 1, 2, 3, 4].every((level) => {
  arena().set([0, 0, 0, 0]);
  return x.m3u_check_memory_pressure(level, 4) === 1;
}));
check("declines an unknown level", x.m3u_check_memory_pressure(5, 4) === 0);
check("declines a context that does not decode", x.m3u_check_memory_pressure(0, 2) === 0 && logs.length > 0);

for (const base of ["http://proxy:8080/", "http://proxy:8080", "http://proxy:8080///", "http://prøxy/ä/"]) {
  check(`start run ${base}`, startRun(base) === 1);
  answers(`consecutive ids, ${base}`, base, [...Array(1200).keys()].map((i) => i + 1), urls(1200));
}
startRun("http://proxy:8080/");
const odd = [1, 9, 10, 11, 99, 100, 101, 7, 8, 9, 999, 1000, 4294967295, 4294967296, 4294967297,
  2 ** 48, 2 ** 48 + 1, 18446744073709551615n, 0, 1, 12345678901234567890n];
answers("ids with gaps, carries, 2^32, 2^48, u64::MAX, 0", "http://proxy:8080/", odd, urls(odd.length));
answers("one channel, empty URL", "http://proxy:8080/", [42], [""]);
answers("other columns around the URL (tvg_id, attributes, extras)", "http://proxy:8080/", [5, 6], ["a", "b"],
  { fields: 0x3081, extra: { 0: ["t1", "t2"], 12: ["x", "y"], 13: ["#E", "#F"] } });
answers("no URL column sent: x-upstream-url empty", "http://proxy:8080/", [5, 6], ["", ""], { fields: 0 });
// The data's length prefix is guessed from n * (prefix + 1): 1 channel with
// a 120-byte prefix guesses 1 byte, a 10-digit id needs 2 (data moved).
const base112 = "http://" + "h".repeat(105);
startRun(base112);
answers("data length prefix longer than guessed", base112, [1234567890], ["u"]);
// An answer larger than the arena's free half: pushed with write_channels.
const longBase = "http://proxy/" + "p".repeat(3000);
startRun(longBase);
answers("pushed with write_channels", longBase, [...Array(400).keys()], urls(400));
startRun("/");
answers("base URL of slashes only: KeepAll", "", [1, 2], ["a", "b"]);
startRun("");
answers("empty base URL: KeepAll", "", [1, 2], ["a", "b"]);

startRun("http://proxy/");
check("other stages: UNSUPPORTED_STAGE", [0, 1, 2, 3, 5, -1].every((s) => run(stageInput({ ids: [1], urls: ["u"] }), s) === -3));
const good = stageInput({ ids: [1, 2], urls: ["a", "b"] });
check("truncated input: DECODE_ERROR", [1, 5, 12, good.length - 1].every((len) => run(good.slice(0, len)) === -2));
const badIds = stageInput({ ids: [1, 2], urls: ["a", "b"] });
badIds[3] = 3; // count 3, ids for 2
check("inconsistent count: DECODE_ERROR", run(badIds) === -2);
check("negative input length: DECODE_ERROR", x.m3u_execute_stage(4, -1) === -2);
check("input as large as the arena: INPUT_TOO_LARGE", x.m3u_execute_stage(4, C) === -4);
check("m3u_cleanup", x.m3u_cleanup() === 0);

console.log(failures ? `${failures} check(s) failed` : "all checks passed");
process.exit(failures ? 1 : 0);
