// A real OAuth 2.0 authorization server for sidekey's sidecar tests:
// node-oidc-provider (an OpenID-certified implementation), configured for the
// client credentials grant with both client authentication methods enforced,
// resource indicators (RFC 8707), JWT access tokens, and a short token
// lifetime. It adds nothing of its own to the protocol: the only extension is
// that the token endpoint accepts `audience` and the custom parameters named
// with --extra-param, and copies them into the access token's claims so tests
// can prove they arrived. And one strictness: oidc-provider accepts
// client_secret_basic and client_secret_post interchangeably for a client
// registered with either; here a client must use the method it is registered
// with, so tests prove which form the sidecar sent.
//
// Usage: node server.mjs --clients clients.json [--ttl SECONDS]
//        [--tls-cert cert.pem --tls-key key.pem] [--extra-param NAME ...]
//        [--mint-refresh-token CLIENT_ID] [--interactive]
// Prints one JSON line {"port": N} once it listens on 127.0.0.1, then one
// JSON line per token request ({"event": "grant.success" | "grant.error", ...}).
//
// clients.json: [{"client_id", "client_secret", "token_endpoint_auth_method",
// optionally "grant_types", "redirect_uris", "response_types"}, ...]
//
// --mint-refresh-token stands in for a user's authorization: it records a
// grant for that client (an authorization_code + refresh_token client) and
// prints {"refresh_token": "..."} before the port line. Refresh tokens rotate
// on every use, so a client that reuses a spent one is caught (the server
// then revokes the whole grant, as OAuth 2.0 security practice asks).
//
// --interactive turns on the authorization code flow as a browser sees it:
// oidc-provider's own development login and consent pages (any login and
// password sign in; "[ Cancel ]" answers error=access_denied), PKCE, and a
// refresh token for every authorization_code + refresh_token client. Token
// revocation (RFC 7009) is on, so a test can revoke a refresh token.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';
import * as clientCredentials from 'oidc-provider/lib/actions/grants/client_credentials.js';

const { values: args } = parseArgs({
  options: {
    clients: { type: 'string' },
    ttl: { type: 'string', default: process.env.OAUTH_TOKEN_TTL ?? '300' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'extra-param': { type: 'string', multiple: true, default: ['audience', 'tenant'] },
    'default-resource': { type: 'string', default: 'https://api.sidekey.test' },
    'mint-refresh-token': { type: 'string' },
    interactive: { type: 'boolean', default: false },
  },
});

if (!args.clients) {
  console.error('--clients FILE is required');
  process.exit(2);
}
const ttl = Number.parseInt(args.ttl, 10);
if (!(ttl > 0)) {
  console.error(`--ttl must be a positive number of seconds, not ${args.ttl}`);
  process.exit(2);
}
const extraParams = args['extra-param'];
const SCOPES = ['payments.read', 'payments.write'];

const clients = JSON.parse(readFileSync(args.clients, 'utf8')).map((c) => ({
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope: SCOPES.join(' '),
  id_token_signed_response_alg: 'ES256',
  ...c,
}));

// A fresh signing key per run, so no development key is ever used.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-1', alg: 'ES256', use: 'sig' };

const provider = new Provider('http://127.0.0.1', {
  clients,
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', ...SCOPES],
  features: {
    devInteractions: { enabled: args.interactive },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Every token is for a resource server, hence a JWT the upstream can read.
      defaultResource: async (ctx, client, oneOf) => oneOf ?? args['default-resource'],
      getResourceServerInfo: async (ctx, resource) => ({
        scope: SCOPES.join(' '),
        audience: resource,
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  ttl: { ClientCredentials: ttl, AccessToken: ttl, Grant: 3600, RefreshToken: 3600 },
  rotateRefreshToken: true,
  // OpenID Connect ties refresh tokens to `offline_access` (and that scope
  // to prompt=consent); a plain OAuth 2.0 client asks for neither.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  pkce: { required: () => args.interactive },
  extraTokenClaims: async (ctx) => {
    const received = {};
    for (const name of extraParams) {
      if (ctx.oidc.params[name] !== undefined) received[name] = ctx.oidc.params[name];
    }
    return { token_request: received };
  },
});

// Let the client credentials grant accept the extra parameters too (oidc-provider's
// `extraParams` setting covers the authorization endpoint only).
provider.registerGrantType(
  'client_credentials',
  clientCredentials.handler,
  [...clientCredentials.parameters, ...extraParams],
  ['resource'],
);

// Strict client authentication method (see the top of this file). Runs around
// the token endpoint; a mismatch replaces the answer with RFC 6749's invalid_client.
provider.use(async (ctx, next) => {
  await next();
  const client = ctx.oidc?.client;
  if (ctx.path !== '/token' || !client || ctx.status !== 200) return;
  const used = ctx.headers.authorization !== undefined ? 'client_secret_basic' : 'client_secret_post';
  if (used !== client.tokenEndpointAuthMethod) {
    ctx.status = 401;
    ctx.body = {
      error: 'invalid_client',
      error_description: `client authenticated with ${used} but is registered for ${client.tokenEndpointAuthMethod}`,
    };
    log({ event: 'grant.error', client_id: client.clientId, error: 'invalid_client', description: ctx.body.error_description });
    return;
  }
  const p = ctx.oidc.params;
  log({
    event: 'grant.success',
    client_id: client.clientId,
    auth_method: used,
    grant_type: p.grant_type,
    scope: p.scope,
    resource: p.resource,
    extra: Object.fromEntries(extraParams.filter((n) => p[n] !== undefined).map((n) => [n, p[n]])),
  });
});

function log(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

provider.on('grant.error', (ctx, error) => {
  log({ event: 'grant.error', client_id: ctx.oidc?.client?.clientId, error: error.error, description: error.error_description });
});

const callback = provider.callback();
const server = args['tls-cert']
  ? https.createServer({ cert: readFileSync(args['tls-cert']), key: readFileSync(args['tls-key']) }, callback)
  : http.createServer(callback);

if (args['mint-refresh-token']) {
  const clientId = args['mint-refresh-token'];
  const client = await provider.Client.find(clientId);
  if (!client) {
    console.error(`--mint-refresh-token: no client ${clientId}`);
    process.exit(2);
  }
  const resource = args['default-resource'];
  const grant = new provider.Grant({ accountId: 'user-1', clientId });
  grant.addOIDCScope('openid offline_access');
  grant.addResourceScope(resource, SCOPES.join(' '));
  const grantId = await grant.save();
  const refreshToken = new provider.RefreshToken({
    accountId: 'user-1',
    client,
    grantId,
    gty: 'authorization_code',
    scope: `openid offline_access ${SCOPES.join(' ')}`,
    resource,
    expiresWithSession: false,
  });
  log({ refresh_token: await refreshToken.save() });
}

server.listen(0, '127.0.0.1', () => {
  log({ port: server.address().port });
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
