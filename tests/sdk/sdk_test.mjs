// Drives the official Sealos devbox TypeScript SDK (@labring/devbox-sdk 1.1.2, unmodified) against
// a devbox-agent, through a fake control plane (tests/integration/fake_cp.py) that tells the SDK
// where the agent is. Output is TAP: one `ok N - name` / `not ok N - name: reason` per check;
// the exit status is non-zero if any check failed.
//
// Environment (tests/integration/test_sdk.py sets all of it):
//   DBX_CP_URL          base URL of the fake control plane, e.g. http://127.0.0.1:41234
//   DBX_DEVBOX          devbox name registered there, pointing at the agent
//   DBX_BAD_DEVBOX      (optional) a devbox registered with a wrong token
//   DBX_KUBECONFIG_FILE kubeconfig YAML the SDK sends (the fake CP checks it byte for byte)
//   DBX_WORKSPACE       the agent's workspace directory (absolute, real path)
//   DBX_MAX_FILE_SIZE   (optional) the agent's --max-file-size; enables the size-limit checks
// All traffic goes to 127.0.0.1 only.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import zlib from 'node:zlib';
import { DevboxSDK } from '@labring/devbox-sdk';

const env = (k, dflt) => {
  const v = process.env[k] ?? dflt;
  if (v === undefined) {
    console.log(`Bail out! environment variable ${k} is required`);
    process.exit(2);
  }
  return v;
};

const CP_URL = env('DBX_CP_URL');
const NAME = env('DBX_DEVBOX');
const BAD_NAME = process.env.DBX_BAD_DEVBOX || '';
const WS = env('DBX_WORKSPACE').replace(/\/+$/, '');
const KUBECONFIG = readFileSync(env('DBX_KUBECONFIG_FILE'), 'utf8');
const CHECK_TIMEOUT_MS = Number(process.env.DBX_CHECK_TIMEOUT_MS || 60000);

for (const u of [CP_URL]) {
  const h = new URL(u).hostname;
  if (h !== '127.0.0.1') {
    console.log(`Bail out! refusing to talk to ${u}: only 127.0.0.1 is allowed`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------- tiny TAP harness
let n = 0;
let failed = 0;
async function check(name, fn) {
  n += 1;
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`timed out after ${CHECK_TIMEOUT_MS} ms`)),
          CHECK_TIMEOUT_MS);
      }),
    ]);
    console.log(`ok ${n} - ${name}`);
  } catch (e) {
    if (e instanceof Skip) {
      console.log(`ok ${n} - ${name} # SKIP ${e.message}`);
      return;
    }
    failed += 1;
    const msg = String((e && e.message) || e).replace(/\s*\n\s*/g, ' ');
    const at = [...((e && e.stack) || '').matchAll(/sdk_test\.mjs:(\d+)/g)].slice(0, 2).map((m) => m[1]);
    const code = e && e.code ? ` [code ${e.code}]` : '';
    console.log(`not ok ${n} - ${name}: ${msg}${code}${at.length ? ` (sdk_test.mjs:${at.join(',')})` : ''}`);
  } finally {
    clearTimeout(timer);
  }
}

// A check that cannot run here reports `ok N - name # SKIP reason` (TAP).
class Skip extends Error {}
const skip = (why) => {
  throw new Skip(why);
};

// Wait (with a deadline) until fn() returns a truthy value; returns it.
async function waitFor(fn, what, timeoutMs = 15000, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// Expect an async call to throw; returns the error.
async function rejects(p, what) {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error(`expected ${what} to throw, it succeeded`);
}

const bufEq = (a, b, what) => {
  assert.ok(Buffer.isBuffer(a), `${what}: result is not a Buffer (${typeof a})`);
  if (!a.equals(b)) {
    let i = 0;
    while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
    assert.fail(`${what}: ${a.length} bytes, expected ${b.length}; first difference at ${i}`);
  }
};

// ---------------------------------------------------------------- archive parsers
// Minimal ustar/pax/GNU reader: returns Map(name -> Buffer) for regular files and a Set of dirs.
function untar(buf) {
  const files = new Map();
  const dirs = new Set();
  let off = 0;
  let longName = null;
  let paxPath = null;
  const str = (b) => {
    const z = b.indexOf(0);
    return b.subarray(0, z < 0 ? b.length : z).toString('utf8');
  };
  while (off + 512 <= buf.length) {
    const h = buf.subarray(off, off + 512);
    if (h.every((x) => x === 0)) break;
    // header checksum: sum of bytes with the checksum field as spaces
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i];
    const want = parseInt(str(h.subarray(148, 156)).trim(), 8);
    if (sum !== want) throw new Error(`tar: bad header checksum at offset ${off}`);
    let name = str(h.subarray(0, 100));
    const sizeField = h.subarray(124, 136);
    let size;
    if (sizeField[0] & 0x80) {
      size = Number(sizeField.readBigUInt64BE(4));
    } else {
      size = parseInt(str(sizeField).trim() || '0', 8);
    }
    const type = String.fromCharCode(h[156] || 48);
    const magic = str(h.subarray(257, 263));
    if (magic.startsWith('ustar')) {
      const prefix = str(h.subarray(345, 500));
      if (prefix) name = `${prefix}/${name}`;
    }
    const body = buf.subarray(off + 512, off + 512 + size);
    if (body.length !== size) throw new Error(`tar: truncated member ${name}`);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'L') {
      longName = str(body);
      continue;
    }
    if (type === 'x') {
      for (const rec of body.toString('utf8').split('\n')) {
        const m = rec.match(/^\d+ path=(.*)$/);
        if (m) paxPath = m[1];
      }
      continue;
    }
    if (type === 'g') continue;
    if (paxPath !== null) name = paxPath;
    else if (longName !== null) name = longName;
    paxPath = null;
    longName = null;
    name = name.replace(/^(\.\/)+/, '');
    if (type === '5') dirs.add(name.replace(/\/+$/, ''));
    else if (type === '0' || type === '\0' || type === '7') files.set(name, Buffer.from(body));
    else files.set(name, Buffer.from(body)); // links etc.: keep so the test can complain
  }
  return { files, dirs };
}

// multipart/mixed as the agent emits it: the boundary is whatever the first line carries.
function parseMultipart(buf) {
  const first = buf.indexOf('\r\n');
  assert.ok(first > 2 && buf.subarray(0, 2).toString() === '--', 'multipart: no leading boundary');
  const boundary = buf.subarray(2, first).toString('latin1');
  const delim = Buffer.from(`\r\n--${boundary}`);
  const parts = [];
  let pos = first + 2; // start of the first part's headers
  for (;;) {
    const hdrEnd = buf.indexOf('\r\n\r\n', pos);
    assert.ok(hdrEnd >= 0, 'multipart: part without header end');
    const headers = buf.subarray(pos, hdrEnd).toString('utf8');
    const bodyStart = hdrEnd + 4;
    const next = buf.indexOf(delim, bodyStart);
    assert.ok(next >= 0, 'multipart: unterminated part');
    const m = headers.match(/filename="([^"]*)"/i);
    parts.push({ headers, filename: m ? m[1] : null, body: Buffer.from(buf.subarray(bodyStart, next)) });
    const after = next + delim.length;
    const tail = buf.subarray(after, after + 2).toString('latin1');
    if (tail === '--') break;
    assert.equal(tail, '\r\n', 'multipart: junk after boundary');
    pos = after + 2;
  }
  return { boundary, parts };
}

// ---------------------------------------------------------------- the checks
const sdk = new DevboxSDK({
  kubeconfig: KUBECONFIG,
  baseUrl: CP_URL,
  http: { timeout: 60000, retries: 0 },
});

let box;
const abs = (p) => `${WS}/${p}`;

await check('getDevbox resolves the devbox through the control plane', async () => {
  box = await sdk.getDevbox(NAME);
  assert.equal(box.name, NAME);
  assert.equal(box.status, 'Running');
  assert.ok(box.info.agentServer && box.info.agentServer.token, 'agentServer.token present');
});
if (!box) {
  console.log(`1..${n}`);
  console.log('Bail out! no devbox instance; cannot continue');
  process.exit(1);
}

await check('isHealthy() is true', async () => {
  assert.equal(await box.isHealthy(), true);
});

// --- write / read ---------------------------------------------------------------------
const text = 'héllo wörld ✓ 你好 🚀\nline two\n';
await check('writeFile(text) + readFile round trip (JSON mode, UTF-8)', async () => {
  await box.writeFile('rw/text.txt', text);
  bufEq(await box.readFile('rw/text.txt'), Buffer.from(text, 'utf8'), 'text.txt');
  // ReadOptions travel as extra query parameters and must not change the answer
  const opt = await box.readFile('rw/text.txt', { encoding: 'utf8', offset: 3, length: 2 });
  bufEq(opt, Buffer.from(text, 'utf8'), 'text.txt with ReadOptions');
});

const bin = Buffer.alloc(4096 + 17);
for (let i = 0; i < bin.length; i++) bin[i] = (i * 7 + (i >> 8)) & 0xff;
await check('writeFile(Buffer) with all byte values (raw mode) + readFile', async () => {
  await box.writeFile('rw/binary.bin', bin);
  bufEq(await box.readFile('rw/binary.bin'), bin, 'binary.bin');
});

await check('writeFile(Buffer of NUL bytes and CRLF) + readFile', async () => {
  const b = Buffer.from('\0\0\r\n\r\n--\0\xff', 'latin1');
  await box.writeFile('rw/nul.bin', b);
  bufEq(await box.readFile('rw/nul.bin'), b, 'nul.bin');
});

const bigText = `ünïcödé línë – ${'x'.repeat(20)}\n`;
const bigString = bigText.repeat(Math.ceil((1.5 * 1024 * 1024) / Buffer.byteLength(bigText)));
await check('writeFile(string > 1 MiB) (SDK switches to raw octet-stream) + readFile', async () => {
  assert.ok(Buffer.byteLength(bigString) > 1024 * 1024);
  await box.writeFile('rw/big-text.txt', bigString);
  bufEq(await box.readFile('rw/big-text.txt'), Buffer.from(bigString, 'utf8'), 'big-text.txt');
});

const bigBuf = randomBytes(5 * 1024 * 1024 + 123);
await check('writeFile(Buffer 5 MiB random) + readFile', async () => {
  await box.writeFile('rw/big.bin', bigBuf);
  bufEq(await box.readFile('rw/big.bin'), bigBuf, 'big.bin');
});

await check('writeFile(string, {encoding:"base64"}) stores the decoded bytes', async () => {
  const s = 'base64 → ✓ payload\n';
  await box.writeFile('rw/b64-string.txt', s, { encoding: 'base64' });
  bufEq(await box.readFile('rw/b64-string.txt'), Buffer.from(s, 'utf8'), 'b64-string.txt');
});

await check('writeFile(Buffer, {encoding:"base64"}) stores the decoded bytes', async () => {
  const b = randomBytes(3000);
  await box.writeFile('rw/b64-buf.bin', b, { encoding: 'base64' });
  bufEq(await box.readFile('rw/b64-buf.bin'), b, 'b64-buf.bin');
});

await check('writeFile(Buffer 3 MiB, {encoding:"base64"}): a 4 MiB JSON body is accepted', async () => {
  const b = randomBytes(3 * 1024 * 1024);
  await box.writeFile('rw/b64-big.bin', b, { encoding: 'base64' });
  bufEq(await box.readFile('rw/b64-big.bin'), b, 'b64-big.bin');
});

const MAX = Number(process.env.DBX_MAX_FILE_SIZE || 0);
await check('writeFile over MAX_FILE_SIZE throws and leaves no file; exactly MAX is fine', async () => {
  if (!MAX) return skip('DBX_MAX_FILE_SIZE not set');
  const e = await rejects(box.writeFile('rw/too-big.bin', Buffer.alloc(MAX + 1, 0x61)), 'oversized write');
  // status 1422 -> SDK INVALID_REQUEST -> thrown as ValidationError (code VALIDATION_ERROR)
  assert.equal(e.code, 'VALIDATION_ERROR', e.message);
  assert.match(e.message, /too large/i);
  const r = await box.listFiles('rw');
  assert.ok(!r.files.some((f) => f.name.includes('too-big')), `left behind: ${r.files.map((f) => f.name)}`);
  await box.writeFile('rw/max.bin', Buffer.alloc(MAX, 0x62));
  const ls = await box.listFiles('rw');
  assert.equal(ls.files.find((f) => f.name === 'max.bin').size, MAX);
  await box.deleteFile('rw/max.bin');
});

await check('writeFile overwrites (truncates) an existing longer file', async () => {
  await box.writeFile('rw/trunc.txt', 'a much longer original content\n');
  await box.writeFile('rw/trunc.txt', 'short');
  bufEq(await box.readFile('rw/trunc.txt'), Buffer.from('short'), 'trunc.txt');
});

await check('absolute path inside the workspace and "./" path name the same file', async () => {
  await box.writeFile(abs('rw/abs.txt'), 'via absolute path');
  bufEq(await box.readFile('./rw/abs.txt'), Buffer.from('via absolute path'), 'abs.txt');
});

await check('names with space and plus survive query encoding (write Buffer, read, download)', async () => {
  const p = 'rw/dir with space/a+b c.bin';
  const b = Buffer.from('plus and space');
  await box.writeFile(p, b); // ?path= via URLSearchParams: space -> '+', '+' -> %2B
  bufEq(await box.readFile(p), b, 'readFile');
  bufEq(await box.downloadFile(p), b, 'downloadFile'); // encodeURIComponent: space -> %20
  const ls = await box.listFiles('rw/dir with space');
  assert.deepEqual(ls.files.map((f) => f.name), ['a+b c.bin']);
});

await check('10 concurrent writeFile + readFile', async () => {
  const bodies = Array.from({ length: 10 }, (_, i) => `concurrent body ${i} `.repeat(100 + i));
  await Promise.all(bodies.map((b, i) => box.writeFile(`rw/conc/${i}.txt`, b)));
  const back = await Promise.all(bodies.map((_, i) => box.readFile(`rw/conc/${i}.txt`)));
  back.forEach((b, i) => bufEq(b, Buffer.from(bodies[i]), `conc/${i}.txt`));
});

await check('readFile of a missing file throws FILE_NOT_FOUND', async () => {
  const e = await rejects(box.readFile('rw/does-not-exist.txt'), 'readFile(missing)');
  assert.equal(e.code, 'FILE_NOT_FOUND', String(e.message));
});

await check('readFile of a directory throws', async () => {
  await rejects(box.readFile('rw'), 'readFile(directory)');
});

await check('absolute path outside the workspace is rejected (nothing read)', async () => {
  const e = await rejects(box.readFile('/etc/passwd'), 'readFile(/etc/passwd)');
  assert.ok(e.code, 'error has a code');
});

// --- list / delete ----------------------------------------------------------------------
await check('listFiles: names, isDir, size; dotfiles hidden', async () => {
  await box.writeFile('ls/one.txt', '1');
  await box.writeFile('ls/three.txt', '333');
  await box.writeFile('ls/.hidden', 'h');
  await box.writeFile('ls/sub/inner.txt', 'inner');
  const r = await box.listFiles('ls');
  assert.ok(Array.isArray(r.files), 'files array');
  const by = Object.fromEntries(r.files.map((f) => [f.name, f]));
  assert.deepEqual(Object.keys(by).sort(), ['one.txt', 'sub', 'three.txt']);
  assert.equal(by['one.txt'].isDir, false);
  assert.equal(by['one.txt'].size, 1);
  assert.equal(by['three.txt'].size, 3);
  assert.equal(by.sub.isDir, true);
  assert.equal(by['one.txt'].path, abs('ls/one.txt'));
  assert.match(by['one.txt'].permissions, /^0[0-7]{3}$/);
  assert.match(by['one.txt'].modified, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  const age = Math.abs(Date.now() - Date.parse(by['one.txt'].modified));
  assert.ok(age < 10 * 60 * 1000, `modified time is now-ish (off by ${age} ms)`);
});

await check('listFiles returns at most 100 entries (official default limit)', async () => {
  const many = {};
  for (let i = 0; i < 120; i++) many[`many/f${String(i).padStart(3, '0')}.txt`] = `${i}`;
  const up = await box.uploadFiles(many);
  assert.equal(up.successCount, 120);
  const r = await box.listFiles('many');
  assert.equal(r.files.length, 100);
  assert.equal(new Set(r.files.map((f) => f.name)).size, 100);
});

await check('listFiles of a missing directory throws FILE_NOT_FOUND', async () => {
  const e = await rejects(box.listFiles('no-such-dir'), 'listFiles(missing)');
  assert.equal(e.code, 'FILE_NOT_FOUND');
});

await check('deleteFile removes the file; readFile then throws; second delete throws', async () => {
  await box.writeFile('del/victim.txt', 'bye');
  await box.deleteFile('del/victim.txt');
  const e = await rejects(box.readFile('del/victim.txt'), 'readFile(deleted)');
  assert.equal(e.code, 'FILE_NOT_FOUND');
  const r = await box.listFiles('del');
  assert.deepEqual(r.files, []);
  await rejects(box.deleteFile('del/victim.txt'), 'deleteFile(missing)');
});

await check('deleteFile of a non-empty directory (non-recursive) throws and keeps it', async () => {
  await box.writeFile('del/dir/keep.txt', 'keep');
  await rejects(box.deleteFile('del/dir'), 'deleteFile(non-empty dir)');
  bufEq(await box.readFile('del/dir/keep.txt'), Buffer.from('keep'), 'keep.txt');
});

// --- upload -----------------------------------------------------------------------------
await check('uploadFiles: several files incl. subdirectories; results and contents', async () => {
  const files = {
    'up/a.txt': 'file a\n',
    'up/sub/b.bin': randomBytes(70000),
    'up/sub/deeper/c.txt': 'ccc',
    'up/empty.txt': '',
  };
  const r = await box.uploadFiles(files);
  assert.equal(r.totalFiles, 4);
  assert.equal(r.successCount, 4);
  assert.equal(r.results.length, 4);
  for (const [p, content] of Object.entries(files)) {
    const want = Buffer.isBuffer(content) ? content : Buffer.from(content);
    const res = r.results.find((x) => x.path === abs(p));
    assert.ok(res, `result for ${p} (got ${JSON.stringify(r.results.map((x) => x.path))})`);
    assert.equal(res.success, true, `${p}: ${res.error}`);
    assert.equal(res.size, want.length, `${p} size`);
    bufEq(await box.readFile(p), want, p);
  }
});

await check('uploadFiles with targetDir', async () => {
  const r = await box.uploadFiles({ 'x.txt': 'X', 'y/z.txt': 'Z' }, { targetDir: 'up2' });
  assert.equal(r.successCount, 2, JSON.stringify(r));
  bufEq(await box.readFile('up2/x.txt'), Buffer.from('X'), 'up2/x.txt');
  bufEq(await box.readFile('up2/y/z.txt'), Buffer.from('Z'), 'up2/y/z.txt');
});

await check('uploadFiles: names with a double quote, non-ASCII and spaces are stored verbatim', async () => {
  // undici's FormData escapes `"` as %22 in the filename; everything else goes as raw UTF-8.
  const files = { 'up3/quo"te.txt': 'q', 'up3/ünï cödé.txt': 'u', 'up3/sp ace/x.txt': 's' };
  const r = await box.uploadFiles(files);
  assert.equal(r.successCount, 3, JSON.stringify(r));
  for (const [p, c] of Object.entries(files)) bufEq(await box.readFile(p), Buffer.from(c), p);
  const ls = await box.listFiles('up3');
  assert.deepEqual(ls.files.map((f) => f.name).sort(), ['quo"te.txt', 'sp ace', 'ünï cödé.txt']);
});

await check('uploadFiles: one file over MAX_FILE_SIZE fails alone, the others are stored', async () => {
  if (!MAX) return skip('DBX_MAX_FILE_SIZE not set');
  const r = await box.uploadFiles({ 'upbig/ok.txt': 'fine', 'upbig/too-big.bin': Buffer.alloc(MAX + 1) });
  assert.equal(r.totalFiles, 2, JSON.stringify(r));
  assert.equal(r.successCount, 1, JSON.stringify(r));
  const bad = r.results.find((x) => !x.success);
  assert.ok(bad && bad.error, `failed result with an error text: ${JSON.stringify(r.results)}`);
  assert.ok(bad.path.endsWith('too-big.bin'), bad.path);
  bufEq(await box.readFile('upbig/ok.txt'), Buffer.from('fine'), 'upbig/ok.txt');
  const ls = await box.listFiles('upbig');
  assert.deepEqual(ls.files.map((f) => f.name), ['ok.txt']);
});

// --- move / rename ----------------------------------------------------------------------
await check('moveFile moves; missing source and existing destination throw; overwrite works', async () => {
  await box.writeFile('mv/src.txt', 'moving');
  await box.moveFile('mv/src.txt', 'mv/new/dst.txt'); // parent is created
  bufEq(await box.readFile('mv/new/dst.txt'), Buffer.from('moving'), 'dst');
  await rejects(box.readFile('mv/src.txt'), 'readFile(moved source)');
  const e1 = await rejects(box.moveFile('mv/src.txt', 'mv/x.txt'), 'move(missing source)');
  assert.equal(e1.code, 'FILE_NOT_FOUND');
  await box.writeFile('mv/other.txt', 'other');
  const e2 = await rejects(box.moveFile('mv/other.txt', 'mv/new/dst.txt'), 'move(existing dest)');
  assert.equal(e2.code, 'CONFLICT');
  bufEq(await box.readFile('mv/new/dst.txt'), Buffer.from('moving'), 'dst untouched');
  await box.moveFile('mv/other.txt', 'mv/new/dst.txt', true);
  bufEq(await box.readFile('mv/new/dst.txt'), Buffer.from('other'), 'dst overwritten');
  await rejects(box.readFile('mv/other.txt'), 'readFile(moved other)');
});

await check('moveFile of a directory', async () => {
  await box.writeFile('mv/dir/f.txt', 'in dir');
  await box.moveFile('mv/dir', 'mv/dir2');
  bufEq(await box.readFile('mv/dir2/f.txt'), Buffer.from('in dir'), 'dir2/f.txt');
});

await check('renameFile renames; conflict and missing source throw', async () => {
  await box.writeFile('rn/a.txt', 'A');
  await box.writeFile('rn/b.txt', 'B');
  await box.renameFile('rn/a.txt', 'rn/c.txt');
  bufEq(await box.readFile('rn/c.txt'), Buffer.from('A'), 'c.txt');
  await rejects(box.readFile('rn/a.txt'), 'readFile(renamed)');
  const e1 = await rejects(box.renameFile('rn/c.txt', 'rn/b.txt'), 'rename onto existing');
  assert.equal(e1.code, 'CONFLICT');
  bufEq(await box.readFile('rn/b.txt'), Buffer.from('B'), 'b.txt untouched');
  const e2 = await rejects(box.renameFile('rn/nope.txt', 'rn/d.txt'), 'rename missing');
  assert.equal(e2.code, 'FILE_NOT_FOUND');
});

// --- download ---------------------------------------------------------------------------
const dl = {
  'dl/a.txt': Buffer.from('alpha\n'),
  'dl/sub/b.bin': randomBytes(100000),
  'dl/sub/c.txt': Buffer.from('gamma'),
  'dl/empty.txt': Buffer.alloc(0),
};
await check('downloadFile returns the exact bytes (incl. empty file)', async () => {
  for (const [p, b] of Object.entries(dl)) await box.writeFile(p, b);
  for (const [p, b] of Object.entries(dl)) bufEq(await box.downloadFile(p), b, p);
});

await check('downloadFile of a missing file throws', async () => {
  const e = await rejects(box.downloadFile('dl/missing.bin'), 'downloadFile(missing)');
  assert.equal(e.code, 'FILE_NOT_FOUND');
});

const checkTar = (t, what) => {
  for (const [p, b] of Object.entries(dl)) {
    assert.ok(t.files.has(p), `${what}: member ${p} missing (have ${[...t.files.keys()]})`);
    bufEq(t.files.get(p), b, `${what}: ${p}`);
  }
};

await check('downloadFiles default format is a tar.gz of the files and directories', async () => {
  const body = await box.downloadFiles(['dl/a.txt', 'dl/sub', 'dl/empty.txt']);
  assert.ok(Buffer.isBuffer(body));
  assert.equal(body[0], 0x1f);
  assert.equal(body[1], 0x8b);
  checkTar(untar(zlib.gunzipSync(body)), 'default');
});

await check('downloadFiles format tar.gz', async () => {
  const body = await box.downloadFiles(['dl/a.txt', 'dl/sub', 'dl/empty.txt'], { format: 'tar.gz' });
  checkTar(untar(zlib.gunzipSync(body)), 'tar.gz');
});

await check('downloadFiles format tar', async () => {
  const body = await box.downloadFiles(['dl/a.txt', 'dl/sub', 'dl/empty.txt'], { format: 'tar' });
  assert.ok(Buffer.isBuffer(body));
  assert.equal(body.length % 512, 0, 'tar length is a multiple of 512');
  checkTar(untar(body), 'tar');
});

await check('downloadFiles format multipart carries every file with its bytes', async () => {
  const body = await box.downloadFiles(['dl/a.txt', 'dl/sub', 'dl/empty.txt'], { format: 'multipart' });
  const { parts } = parseMultipart(body);
  assert.equal(parts.length, 4, `parts: ${parts.map((p) => p.filename)}`);
  for (const [p, b] of Object.entries(dl)) {
    const part = parts.find((x) => x.filename === abs(p) || x.filename === p);
    assert.ok(part, `part for ${p} (have ${parts.map((x) => x.filename)})`);
    bufEq(part.body, b, `multipart ${p}`);
  }
});

await check('downloadFiles with a missing path throws FILE_NOT_FOUND', async () => {
  const e = await rejects(box.downloadFiles(['dl/a.txt', 'dl/nope']), 'downloadFiles(missing)');
  assert.equal(e.code, 'FILE_NOT_FOUND');
});

// --- search / find / replace ------------------------------------------------------------
await check('searchFiles: case-insensitive name substring, recursive, skips node_modules', async () => {
  await box.writeFile('srch/Config.ts', 'export const port = 3000;\n');
  await box.writeFile('srch/deep/app.config.json', '{"port": 3000}\n');
  await box.writeFile('srch/readme.md', 'nothing');
  await box.writeFile('srch/node_modules/config.js', 'ignored');
  const r = await box.searchFiles({ dir: 'srch', pattern: 'CONFIG' });
  assert.deepEqual([...r.files].sort(), [abs('srch/Config.ts'), abs('srch/deep/app.config.json')]);
});

await check('findInFiles: content keyword (case-sensitive), binary skipped', async () => {
  await box.writeFile('srch/bin.dat', Buffer.concat([Buffer.from([0, 1, 2, 0]), Buffer.from('port = 3000')]));
  const r = await box.findInFiles({ dir: 'srch', keyword: 'port' });
  assert.deepEqual([...r.files].sort(), [abs('srch/Config.ts'), abs('srch/deep/app.config.json')]);
  const none = await box.findInFiles({ dir: 'srch', keyword: 'PORT' });
  assert.deepEqual(none.files, []);
});

await check('replaceInFiles: counts, statuses and file contents after', async () => {
  await box.writeFile('rep/a.txt', 'foo bar foo baz foo\n');
  await box.writeFile('rep/b.txt', 'no match here\n');
  await box.writeFile('rep/u.txt', 'ñfooñ — foo\n');
  const r = await box.replaceInFiles({
    files: ['rep/a.txt', 'rep/b.txt', 'rep/u.txt', 'rep/missing.txt'],
    from: 'foo',
    to: 'QUUX',
  });
  const by = Object.fromEntries(r.results.map((x) => [x.file, x]));
  assert.deepEqual(Object.keys(by).sort(), ['rep/a.txt', 'rep/b.txt', 'rep/missing.txt', 'rep/u.txt']);
  assert.equal(by['rep/a.txt'].status, 'success');
  assert.equal(by['rep/a.txt'].replacements, 3);
  assert.equal(by['rep/u.txt'].status, 'success');
  assert.equal(by['rep/u.txt'].replacements, 2);
  assert.equal(by['rep/b.txt'].status, 'skipped');
  assert.equal(by['rep/b.txt'].replacements, 0);
  assert.equal(by['rep/missing.txt'].status, 'error');
  assert.ok(by['rep/missing.txt'].error, 'missing file has an error text');
  bufEq(await box.readFile('rep/a.txt'), Buffer.from('QUUX bar QUUX baz QUUX\n'), 'a.txt');
  bufEq(await box.readFile('rep/b.txt'), Buffer.from('no match here\n'), 'b.txt');
  bufEq(await box.readFile('rep/u.txt'), Buffer.from('ñQUUXñ — QUUX\n'), 'u.txt');
});

// --- processes --------------------------------------------------------------------------
await check('executeCommand; getProcessStatus -> completed; logs contain output; listed', async () => {
  const r = await box.executeCommand({ command: 'echo', args: ['hello-from-bg;', 'echo', 'err-line', '1>&2'] });
  assert.equal(typeof r.processId, 'string');
  assert.ok(r.processId.length > 0);
  assert.ok(Number.isInteger(r.pid) && r.pid > 0, `pid ${r.pid}`);
  assert.equal(r.processStatus, 'running');
  const st = await waitFor(async () => {
    const s = await box.getProcessStatus(r.processId);
    return s.processStatus !== 'running' ? s : null;
  }, 'process to finish');
  assert.equal(st.processStatus, 'completed');
  assert.equal(st.exitCode, 0);
  assert.equal(st.processId, r.processId);
  const logs = await box.getProcessLogs(r.processId);
  assert.equal(logs.processId, r.processId);
  assert.ok(Array.isArray(logs.logs));
  const joined = logs.logs.join('');
  assert.ok(joined.includes('[stdout] hello-from-bg'), `logs: ${JSON.stringify(logs.logs)}`);
  assert.ok(joined.includes('[stderr] err-line'), `logs: ${JSON.stringify(logs.logs)}`);
  const list = await box.listProcesses();
  const mine = list.processes.find((p) => p.processId === r.processId);
  assert.ok(mine, 'process listed');
  assert.equal(mine.processStatus, 'completed');
});

await check('executeCommand with a failing command ends "failed" with its exit code', async () => {
  const r = await box.executeCommand({ command: 'exit 7' });
  const st = await waitFor(async () => {
    const s = await box.getProcessStatus(r.processId);
    return s.processStatus !== 'running' ? s : null;
  }, 'process to finish');
  assert.equal(st.processStatus, 'failed');
  assert.equal(st.exitCode, 7);
});

await check('getProcessStatus / getProcessLogs of an unknown id throw', async () => {
  await rejects(box.getProcessStatus('nosuchid'), 'getProcessStatus(unknown)');
  await rejects(box.getProcessLogs('nosuchid'), 'getProcessLogs(unknown)');
});

await check('execSync: stdout, stderr, exitCode 0', async () => {
  const r = await box.execSync({ command: 'echo', args: ['hi', 'there;', 'echo', 'oops', '>&2'] });
  assert.equal(r.stdout, 'hi there\n');
  assert.equal(r.stderr, 'oops\n');
  assert.equal(r.exitCode, 0);
  assert.ok(typeof r.durationMs === 'number' && r.durationMs >= 0);
});

await check('execSync: non-zero exit code is returned, not thrown', async () => {
  const r = await box.execSync({ command: 'echo partial; exit 42' });
  assert.equal(r.exitCode, 42);
  assert.equal(r.stdout, 'partial\n');
  const r2 = await box.execSync({ command: 'no-such-command-dbx' });
  assert.equal(r2.exitCode, 127);
});

await check('execSync: default cwd is the workspace', async () => {
  const r = await box.execSync({ command: 'pwd' });
  assert.equal(r.stdout.trim(), WS);
});

await check('execSync: cwd (relative and absolute inside the workspace)', async () => {
  await box.writeFile('cwd/sub/marker.txt', 'm');
  const r1 = await box.execSync({ command: 'pwd; ls', cwd: 'cwd/sub' });
  assert.equal(r1.stdout, `${abs('cwd/sub')}\nmarker.txt\n`);
  const r2 = await box.execSync({ command: 'pwd', cwd: abs('cwd') });
  assert.equal(r2.stdout.trim(), abs('cwd'));
});

await check('execSync: env variables reach the command', async () => {
  const r = await box.execSync({ command: 'echo "[$DBX_FOO][$DBX_BAR]"', env: { DBX_FOO: 'foo value', DBX_BAR: 'b=2' } });
  assert.equal(r.stdout, '[foo value][b=2]\n');
});

await check('execSync: the agent token is not passed to children', async () => {
  const r = await box.execSync({ command: 'env' });
  const token = Buffer.from(box.info.agentServer.token, 'base64').toString('utf8');
  assert.ok(!r.stdout.includes(token), 'token appears in child environment');
});

await check('codeRun: node code', async () => {
  const r = await box.codeRun('const a = [1, 2, 3];\nconsole.log(JSON.stringify({sum: a.reduce((x, y) => x + y, 0), argv: process.argv.slice(1)}));', { argv: ['p1', 'p2'] });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { sum: 6, argv: ['p1', 'p2'] });
});

await check('codeRun: python code', async () => {
  const r = await box.codeRun('import sys\nprint("py", 6 * 7, sys.argv[1:])\n', { language: 'python', argv: ['x'] });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, "py 42 ['x']\n");
});

await check('codeRun: a runtime error gives a non-zero exit and the message on stderr', async () => {
  const r = await box.codeRun('throw new Error("boom-dbx")', { language: 'node' });
  assert.notEqual(r.exitCode, 0);
  assert.ok(r.stderr.includes('boom-dbx'), r.stderr);
});

await check('killProcess on a long sleep: status becomes killed; killing again throws', async () => {
  const r = await box.executeCommand({ command: 'sleep 600' });
  const s0 = await box.getProcessStatus(r.processId);
  assert.equal(s0.processStatus, 'running');
  await box.killProcess(r.processId);
  const st = await waitFor(async () => {
    const s = await box.getProcessStatus(r.processId);
    return s.processStatus !== 'running' ? s : null;
  }, 'killed process to stop running');
  assert.equal(st.processStatus, 'killed');
  const e = await rejects(box.killProcess(r.processId), 'killProcess(not running)');
  assert.equal(e.code, 'CONFLICT');
});

await check('killProcess with SIGTERM', async () => {
  const r = await box.executeCommand({ command: 'sleep 600' });
  await box.killProcess(r.processId, { signal: 'SIGTERM' });
  const st = await waitFor(async () => {
    const s = await box.getProcessStatus(r.processId);
    return s.processStatus !== 'running' ? s : null;
  }, 'SIGTERMed process to stop running');
  assert.notEqual(st.processStatus, 'running');
  assert.equal(st.processStatus, 'killed');
});

// Processes whose argv contains `marker` (read from /proc; the agent runs on this machine).
function pidsWith(marker) {
  const out = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'latin1').split('\0').join(' ');
      if (cmd.includes(marker) && !cmd.includes('sh -c')) out.push(Number(d));
    } catch {
      // process went away
    }
  }
  return out;
}

await check('killProcess kills the whole process group (children of sh too)', async () => {
  const r = await box.executeCommand({ command: 'sleep 41.25 & sleep 42.25 & wait' });
  await waitFor(async () => pidsWith('sleep 41.25').length && pidsWith('sleep 42.25').length,
    'both sleeps to start');
  await box.killProcess(r.processId);
  await waitFor(async () => !pidsWith('sleep 41.25').length && !pidsWith('sleep 42.25').length,
    'every process of the group to die', 5000);
  const st = await waitFor(async () => {
    const s = await box.getProcessStatus(r.processId);
    return s.processStatus !== 'running' ? s : null;
  }, 'status to leave running');
  assert.equal(st.processStatus, 'killed');
});

await check('executeCommand timeout: the process is killed when it expires', async () => {
  const r = await box.executeCommand({ command: 'sleep 43.25', timeout: 1 });
  const st = await waitFor(async () => {
    const s = await box.getProcessStatus(r.processId);
    return s.processStatus !== 'running' ? s : null;
  }, 'timed-out process to stop', 10000);
  assert.equal(st.processStatus, 'killed');
  await waitFor(async () => !pidsWith('sleep 43.25').length, 'sleep to be gone', 5000);
});

await check('execSync timeout throws and the child does not outlive it', async () => {
  const t0 = Date.now();
  const e = await rejects(box.execSync({ command: 'sleep 44.25', timeout: 1 }), 'execSync past its timeout');
  assert.ok(Date.now() - t0 < 10000, `took ${Date.now() - t0} ms`);
  assert.match(e.message, /time/i);
  await waitFor(async () => !pidsWith('sleep 44.25').length, 'timed-out child to be killed', 5000);
});

// A listener bound to 0.0.0.0 (only ever connected to via 127.0.0.1), started as a background
// process through the agent, shows up in getPorts(); after killProcess it is gone.
await check('getPorts lists a 0.0.0.0 http.server started via executeCommand; gone after kill', async () => {
  const r = await box.executeCommand({ command: 'exec python3 -u -m http.server 0 --bind 0.0.0.0' });
  const port = await waitFor(async () => {
    const l = await box.getProcessLogs(r.processId);
    const m = l.logs.join('').match(/port (\d+)/);
    if (!m && l.processStatus !== 'running') throw new Error(`server exited: ${l.logs.join('')}`);
    return m ? Number(m[1]) : null;
  }, 'http.server to print its port');
  const res = await fetch(`http://127.0.0.1:${port}/`);
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  const p = await box.getPorts();
  assert.ok(Array.isArray(p.ports));
  assert.ok(p.ports.includes(port), `port ${port} not in ${JSON.stringify(p.ports)}`);
  assert.equal(typeof p.lastUpdatedAt, 'number');
  await box.killProcess(r.processId);
  await waitFor(async () => {
    const q = await box.getPorts();
    return !q.ports.includes(port);
  }, `port ${port} to disappear from getPorts`);
});

await check('getPorts does not list a 127.0.0.1-only listener', async () => {
  const srv = net.createServer();
  await new Promise((res) => srv.listen(0, '127.0.0.1', res));
  try {
    const port = srv.address().port;
    const p = await box.getPorts();
    assert.ok(!p.ports.includes(port), `loopback-only port ${port} listed`);
  } finally {
    srv.close();
  }
});

// --- auth -------------------------------------------------------------------------------
if (BAD_NAME) {
  await check('wrong token: agent calls throw, /health still answers', async () => {
    const bad = await sdk.getDevbox(BAD_NAME);
    const e = await rejects(bad.listFiles('rw'), 'listFiles with a wrong token');
    assert.equal(e.context && e.context.status, 401, `status ${e.context && e.context.status}`);
    assert.equal(await bad.isHealthy(), true, '/health is unauthenticated');
  });
}

await check('isHealthy() still true at the end', async () => {
  assert.equal(await box.isHealthy(), true);
});

await sdk.close();
console.log(`1..${n}`);
console.log(`# ${n - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
