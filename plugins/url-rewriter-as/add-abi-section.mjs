// Post-processing for the AssemblyScript output (asc has no custom-section
// syntax): checks the module's imports and exports against docs/ABI.md §2
// and appends the custom section `m3u_abi_version` = 02 00 00 00 (§1).
//
//   node add-abi-section.mjs IN.wasm OUT.wasm
import { readFileSync, writeFileSync } from "node:fs";

const ABI_VERSION = 2;
const SECTION_NAME = "m3u_abi_version";
const REQUIRED_EXPORTS = [
  "memory",
  "m3u_arena_ptr",
  "m3u_arena_capacity",
  "m3u_plugin_info",
  "m3u_init",
  "m3u_execute_stage",
  "m3u_check_memory_pressure",
  "m3u_cleanup",
];

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error("usage: node add-abi-section.mjs IN.wasm OUT.wasm");
  process.exit(2);
}

function fail(message) {
  console.error(`add-abi-section: ${input}: ${message}`);
  process.exit(1);
}

function leb(value) {
  const bytes = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    bytes.push(byte);
  } while (value !== 0);
  return bytes;
}

const wasm = readFileSync(input);
const MAGIC = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
if (wasm.length < 8 || MAGIC.some((byte, i) => wasm[i] !== byte)) {
  fail("not a WebAssembly binary module (version 1)");
}

// A minimal reader: section headers, and the import and export sections.
let pos = 8;
function u32() {
  let result = 0;
  let shift = 0;
  for (;;) {
    if (pos >= wasm.length) fail("truncated LEB128");
    const byte = wasm[pos++];
    result |= (byte & 0x7f) << shift;
    if (byte < 0x80) return result >>> 0;
    shift += 7;
    if (shift > 28) fail("LEB128 too long");
  }
}
function name() {
  const len = u32();
  const text = wasm.subarray(pos, pos + len).toString("utf8");
  pos += len;
  return text;
}
function limits() {
  const flags = wasm[pos++];
  u32();
  if (flags & 1) u32();
}

const imports = [];
const exports = new Map();
let memories = 0;
while (pos < wasm.length) {
  const id = wasm[pos++];
  const size = u32();
  const end = pos + size;
  if (end > wasm.length) fail(`section ${id} runs past the end`);
  if (id === 0) {
    if (name() === SECTION_NAME) fail(`already has a ${SECTION_NAME} section`);
  } else if (id === 2) {
    for (let count = u32(); count > 0; count--) {
      const module = name();
      const field = name();
      const kind = wasm[pos++];
      imports.push({ module, field, kind });
      if (kind === 0) u32();
      else if (kind === 1) { pos++; limits(); }
      else if (kind === 2) { memories++; limits(); }
      else if (kind === 3) pos += 2;
      else fail(`unknown import kind ${kind}`);
    }
  } else if (id === 5) {
    memories += u32();
  } else if (id === 7) {
    for (let count = u32(); count > 0; count--) {
      const field = name();
      const kind = wasm[pos++];
      u32();
      exports.set(field, kind);
    }
  }
  pos = end;
}

for (const { module, field, kind } of imports) {
  if (module !== "host" || kind !== 0) {
    fail(`imports ${module}.${field} (kind ${kind}); only functions from "host" are allowed`);
  }
}
if (memories !== 1) fail(`has ${memories} memories, needs exactly one of its own`);
for (const field of REQUIRED_EXPORTS) {
  const kind = exports.get(field);
  if (kind === undefined) fail(`does not export ${field}`);
  if ((field === "memory") !== (kind === 2)) fail(`export ${field} has the wrong kind ${kind}`);
}

// Section id 0, size, name (LEB128 length + bytes), payload: the version
// as a little-endian u32.
const nameBytes = [...Buffer.from(SECTION_NAME, "utf8")];
const payload = [ABI_VERSION & 0xff, (ABI_VERSION >>> 8) & 0xff, (ABI_VERSION >>> 16) & 0xff, ABI_VERSION >>> 24];
const content = [...leb(nameBytes.length), ...nameBytes, ...payload];
const section = Buffer.from([0x00, ...leb(content.length), ...content]);
writeFileSync(output, Buffer.concat([wasm, section]));
console.log(
  `${output}: ${wasm.length + section.length} bytes; imports: ` +
    (imports.map(({ field }) => `host.${field}`).join(", ") || "none"),
);
