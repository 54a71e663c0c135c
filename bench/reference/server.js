// Reference receiver for bench/intake.sh: the least a webhook endpoint can do. It verifies
// X-Hub-Signature (HMAC-SHA1 of the raw body, constant-time compare) and answers 200; it stores nothing.
// One Node.js process, as a minimal Express app would be deployed.
//
//   INTERCOM_CLIENT_SECRET=... PORT=8090 node server.js
'use strict';

const crypto = require('node:crypto');
const express = require('express');

const secret = process.env.INTERCOM_CLIENT_SECRET;
if (!secret) {
  console.error('INTERCOM_CLIENT_SECRET is not set');
  process.exit(2);
}
const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 8090);

const app = express();
app.disable('x-powered-by');
app.disable('etag');

function verified(req) {
  const header = req.get('x-hub-signature');
  if (!header || !header.startsWith('sha1=')) return false;
  const given = Buffer.from(header.slice(5), 'hex');
  if (given.length !== 20) return false;
  const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  const expected = crypto.createHmac('sha1', secret).update(body).digest();
  return crypto.timingSafeEqual(given, expected);
}

const raw = express.raw({ type: () => true, limit: '1mb' });
const receive = (req, res) => {
  if (!verified(req)) {
    res.status(401).json({ error: 'signature_mismatch' });
    return;
  }
  res.status(200).json({ status: 'ok' });
};
app.post('/', raw, receive);
app.post('/webhooks/intercom', raw, receive);
app.get('/healthz', (req, res) => res.json({ status: 'ok' }));

app.listen(port, host, () => {
  console.log(`reference receiver listening on http://${host}:${port}`);
});
