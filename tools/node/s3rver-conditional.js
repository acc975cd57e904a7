#!/usr/bin/env node
// s3rver with S3's conditional writes.
//
// Why: tansu keeps each partition's high watermark in an object that it creates with
// `If-None-Match: *` and updates with `If-Match: <etag>`, as S3 allows. s3rver 3.7 ignores both headers,
// so after a restart tansu's create silently overwrites the stored watermark and new records overwrite
// acknowledged ones from offset 0. This entry point runs s3rver unchanged, with one middleware in front
// that answers 412 Precondition Failed, as S3 does, when a conditional PUT's condition does not hold.
// Conditional PUTs of one key are serialised, so check-then-write is atomic within this process.
//
// Usage: node s3rver-conditional.js -d DIR -a ADDRESS -p PORT [--bucket NAME]... [--silent]
'use strict';

const S3rver = require('s3rver');

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

async function main() {
  const opts = parseArgs(process.argv.slice(2));
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
