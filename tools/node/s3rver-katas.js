#!/usr/bin/env node
// s3rver as the lab runs it: unchanged, plus two things real S3 gives and tansu relies on.
//
// 1. Conditional writes. tansu keeps each partition's high watermark in an object that it creates with
//    `If-None-Match: *` and updates with `If-Match: <etag>`. s3rver 3.7 ignores both headers, so after a
//    restart tansu's create silently overwrote the stored watermark and new records overwrote
//    acknowledged ones from offset 0. A middleware in front answers 412 Precondition Failed, as S3 does,
//    when a conditional PUT's condition does not hold; conditional PUTs of one key are serialised, so
//    check-then-write is atomic within this process.
// 2. Atomic, acknowledged-after-written objects. s3rver writes an object straight to its final path and
//    answers before the file is written, so a crash could lose an acknowledged object or leave half of
//    one (which a conditional create then refuses to replace). Objects are written to a temporary file,
//    which is renamed into place once written, before the answer. Their metadata and MD5 files are
//    written the same way: s3rver truncated and rewrote them in place, and a kill in that window left
//    an empty metadata file that made every later listing of the bucket fail (JSON.parse), which stopped
//    tansu from serving any fetch. This survives a crash of the process (the lab's chaos), not a power
//    cut: there is no fsync.
// 3. Listings that cost what S3's do, and that a concurrent write cannot fail. tansu lists a partition's record objects on every fetch, from the
//    first key. s3rver answered a listing by stat-ing every file under the prefix (three per object),
//    synchronously, then reading two files per listed object; with a few hundred objects a partition
//    that took most of a core at 800 events/s through the SIEM. And a file renamed away between the
//    directory read and its stat (a temporary file of 2.) failed the whole listing with ENOENT.
//    Directories are now read with their entry types (no stat per file), and each object's metadata is
//    kept in memory once read (this process is the only writer of its directory; every write, copy or
//    delete of a key forgets it).
//
// Usage: node s3rver-katas.js -d DIR -a ADDRESS -p PORT [--bucket NAME]... [--silent]
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const fsp = require('fs/promises');
const path = require('path');
const { pipeline, Transform } = require('stream');
const s3rverUtils = require('s3rver/lib/utils');

// s3rver's walk, without a stat per file; replaced before s3rver's store module takes a reference to it.
s3rverUtils.walk = function* walk(dir, recurseFilter) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const filePath = path.posix.join(dir, entry.name);
    if (!entry.isDirectory()) {
      yield filePath;
    } else if (!recurseFilter || recurseFilter(filePath)) {
      yield* walk(filePath, recurseFilter);
    }
  }
};

const S3rver = require('s3rver');
const FilesystemStore = require('s3rver/lib/stores/filesystem');
const S3Object = require('s3rver/lib/models/object');

function parseArgs(argv) {
  const opts = { directory: null, address: '127.0.0.1', port: 4568, silent: false, buckets: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '-d' || arg === '--directory') opts.directory = value();
    else if (arg === '-a' || arg === '--address') opts.address = value();
    else if (arg === '-p' || arg === '--port') opts.port = Number(value());
    else if (arg === '--bucket') opts.buckets.push(value());
    else if (arg === '--silent') opts.silent = true;
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!opts.directory) throw new Error('-d DIR is required');
  return opts;
}

const keyLocks = new Map();

async function withKeyLock(key, fn) {
  const previous = keyLocks.get(key) || Promise.resolve();
  let release;
  const mine = new Promise(resolve => (release = resolve));
  const tail = previous.then(() => mine);
  keyLocks.set(key, tail);
  await previous;
  try {
    return await fn();
  } finally {
    release();
    if (keyLocks.get(key) === tail) keyLocks.delete(key);
  }
}

const unquote = etag => (etag || '').replace(/"/g, '').trim();

function conditionalWrites(store) {
  return async (ctx, next) => {
    const ifNoneMatch = ctx.get('if-none-match');
    const ifMatch = ctx.get('if-match');
    if (ctx.method !== 'PUT' || (!ifNoneMatch && !ifMatch)) return next();
    const [bucket, ...rest] = ctx.path.split('/').slice(1).map(decodeURIComponent);
    const key = rest.join('/');
    if (!bucket || !key) return next();
    return withKeyLock(`${bucket}/${key}`, async () => {
      let current = null;
      try {
        current = (await store.getMetadata(bucket, key)).etag;
      } catch (err) {
        if (err.code !== 'ENOENT') throw err;
      }
      const exists = current !== null;
      const failed =
        (ifNoneMatch === '*' && exists) ||
        (ifMatch && (!exists || (ifMatch.trim() !== '*' && unquote(ifMatch) !== unquote(current))));
      if (failed) {
        ctx.status = 412;
        ctx.type = 'application/xml';
        ctx.body =
          '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code>' +
          '<Message>At least one of the pre-conditions you specified did not hold</Message>' +
          `<Condition>${ifNoneMatch ? 'If-None-Match' : 'If-Match'}</Condition></Error>`;
        return undefined;
      }
      return next();
    });
  };
}

const temporaryPathFor = finalPath => `${finalPath}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`;

async function writeFileAtomically(finalPath, data) {
  const tmpPath = temporaryPathFor(finalPath);
  try {
    await fsp.writeFile(tmpPath, data);
    await fsp.rename(tmpPath, finalPath);
  } catch (err) {
    await fsp.rm(tmpPath, { force: true });
    throw err;
  }
}

// s3rver's putMetadata (lib/stores/filesystem.js), with its two writes made atomic.
function atomicPutMetadata() {
  return async function putMetadata(bucket, key, metadata, md5) {
    const json = Object.fromEntries(
      Object.entries(metadata).filter(
        ([name]) => S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-'),
      ),
    );
    if (md5) await writeFileAtomically(this.getResourcePath(bucket, key, 'object.md5'), md5);
    await writeFileAtomically(this.getResourcePath(bucket, key, 'metadata.json'), JSON.stringify(json, null, 2));
  };
}

function atomicPutObject() {
  return async function putObject(object) {
    const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
    const md5Path = this.getResourcePath(object.bucket, object.key, 'object.md5');
    const tmpPath = temporaryPathFor(objectPath);
    await fsp.mkdir(path.dirname(objectPath), { recursive: true });
    const md5Context = crypto.createHash('md5');
    let size = 0;
    try {
      if (Buffer.isBuffer(object.content)) {
        await fsp.writeFile(tmpPath, object.content);
        md5Context.update(object.content);
        size = object.content.length;
      } else {
        const hashing = new Transform({
          transform(chunk, encoding, callback) {
            md5Context.update(chunk, encoding);
            size += chunk.length;
            callback(null, chunk);
          },
        });
        await new Promise((resolve, reject) =>
          pipeline(object.content, hashing, fs.createWriteStream(tmpPath), err => (err ? reject(err) : resolve())),
        );
      }
      // Without its .md5 file an object's ETag is computed from its content, so dropping the old one
      // first keeps the ETag right whichever step a crash interrupts.
      await fsp.rm(md5Path, { force: true });
      await fsp.rename(tmpPath, objectPath);
    } catch (err) {
      await fsp.rm(tmpPath, { force: true });
      throw err;
    }
    const md5 = md5Context.digest('hex');
    await this.putMetadata(object.bucket, object.key, object.metadata, md5);
    return { size, md5 };
  };
}

// Metadata of objects by object path. A read that overlaps a write of the same key does not fill the
// cache (the generation of the key moved on), so a stale entry cannot outlive the write.
const METADATA_CACHE_LIMIT = 500000;
const metadataCache = new Map();
const generations = new Map();

function forget(objectPath) {
  metadataCache.delete(objectPath);
  generations.set(objectPath, (generations.get(objectPath) || 0) + 1);
}

function cachedMetadata(store) {
  const readMetadata = store.prototype.getMetadata;
  // Each write, with where its arguments name the object it changes.
  const writers = {
    putObject: ([object]) => [object.bucket, object.key],
    putMetadata: ([bucket, key]) => [bucket, key],
    deleteObject: ([bucket, key]) => [bucket, key],
    copyObject: ([, , destBucket, destKey]) => [destBucket, destKey],
  };
  for (const [name, target] of Object.entries(writers)) {
    const write = store.prototype[name];
    store.prototype[name] = async function (...args) {
      const objectPath = this.getResourcePath(...target(args), 'object');
      forget(objectPath);
      try {
        return await write.apply(this, args);
      } finally {
        forget(objectPath);
      }
    };
  }
  store.prototype.getMetadata = async function (bucket, key) {
    const objectPath = this.getResourcePath(bucket, key, 'object');
    const cached = metadataCache.get(objectPath);
    if (cached) return { ...cached };
    const generation = generations.get(objectPath) || 0;
    const metadata = await readMetadata.call(this, bucket, key);
    if ((generations.get(objectPath) || 0) === generation) {
      if (metadataCache.size >= METADATA_CACHE_LIMIT) metadataCache.clear();
      metadataCache.set(objectPath, metadata);
    }
    return { ...metadata };
  };
  for (const name of ['deleteBucket', 'reset']) {
    const drop = store.prototype[name];
    store.prototype[name] = function (...args) {
      metadataCache.clear();
      return drop.apply(this, args);
    };
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  FilesystemStore.prototype.putObject = atomicPutObject();
  FilesystemStore.prototype.putMetadata = atomicPutMetadata();
  cachedMetadata(FilesystemStore);
  const server = new S3rver({
    directory: opts.directory,
    address: opts.address,
    port: opts.port,
    silent: opts.silent,
    allowMismatchedSignatures: true,
    vhostBuckets: false,
    configureBuckets: opts.buckets.map(name => ({ name, configs: [] })),
  });
  // Koa composes its middleware when the server starts listening, so this one runs first.
  server.middleware.unshift(conditionalWrites(server.store));
  const { address, port } = await server.run();
  console.log('S3rver (conditional writes) listening on %s:%d', address, port);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch(err => {
  console.error(err);
  process.exit(1);
});
