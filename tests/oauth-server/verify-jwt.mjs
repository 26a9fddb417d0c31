// Verifies an HMAC-signed JWT with `jose`, a JWT library independent of the
// one the sidecar signs with, for the sidecar's signature tests.
// Usage: node verify-jwt.mjs ALG < {"jwt": "...", "key": "..."}
// Prints {"header": ..., "payload": ...}; exits 1 with the reason when the
// token does not verify.
import { jwtVerify } from 'jose';

const [alg] = process.argv.slice(2);
let input = '';
for await (const chunk of process.stdin) input += chunk;
const { jwt, key } = JSON.parse(input);
try {
  const { payload, protectedHeader } = await jwtVerify(jwt, new TextEncoder().encode(key), {
    algorithms: [alg],
  });
  process.stdout.write(JSON.stringify({ header: protectedHeader, payload }));
} catch (e) {
  process.stderr.write(`${e.code ?? 'ERROR'}: ${e.message}\n`);
  process.exit(1);
}
