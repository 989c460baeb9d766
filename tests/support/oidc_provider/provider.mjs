// A real, certified OpenID provider (panva/node-oidc-provider) for the OIDC integration tests,
// served over HTTPS. It issues JWT access tokens (RFC 9068) to clients of the client_credentials
// grant, for one resource server (the façade: `audience`), signed with the keys the test made.
//
// usage: node provider.mjs CONFIG.json
//   CONFIG: { host, port (0 = any; the same port again after a restart keeps the issuer),
//             cert, key (PEM files), jwks (a private JWKS: the test keeps the keys to forge
//             tokens with), audience, clients: [{ client_id, client_secret, groups? }] }
// Prints one JSON line {"issuer": ..., "port": ...} on stdout once it listens.
import { readFileSync } from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const clients = config.clients.map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
}));
const groupsOf = Object.fromEntries(config.clients.map((c) => [c.client_id, c.groups]));

let handler = (_req, res) => { res.writeHead(503); res.end(); };
const server = https.createServer(
  { cert: readFileSync(config.cert), key: readFileSync(config.key) },
  (req, res) => handler(req, res),
);

server.listen(config.port, config.host, () => {
  const { port } = server.address();
  const issuer = `https://${config.host}:${port}`;
  const provider = new Provider(issuer, {
    clients,
    jwks: config.jwks,
    // The test's keys are EC P-256: every signature of this provider is ES256.
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // JWT access tokens for the façade as resource server (RFC 8707 resource indicators).
      resourceIndicators: {
        enabled: true,
        defaultResource: () => config.audience,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          if (resource !== config.audience) throw new Error(`unknown resource ${resource}`);
          return {
            scope: 'llm:use llm:audit',
            audience: config.audience,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 300,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    // Group membership, as an IdP federating a directory (LDAP/AD) would assert it.
    extraTokenClaims: (_ctx, token) => {
      const groups = groupsOf[token.clientId];
      return groups ? { groups } : undefined;
    },
  });
  handler = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
