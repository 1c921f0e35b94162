import { assertEquals, assertRejects } from "./assert.ts";
import { checkProof, loadIdentity, makeProof } from "../../src/link/peer_cert.ts";
import { createCa, issueCert } from "../../src/link/pki.ts";

const nonce = () => crypto.getRandomValues(new Uint8Array(32));
const ca = await createCa({ name: "Our CA" });
const foreignCa = await createCa({ name: "Mallory CA" });
const proxy = await issueCert({ ca, name: "proxy", sans: ["10.78.0.1"] });

Deno.test("a proof of a certificate from our CA, for these nonces, is accepted", async () => {
  const [d, a] = [nonce(), nonce()];
  const proof = await makeProof(await loadIdentity(proxy.cert, proxy.key), d, a);
  assertEquals(await checkProof(proof, ca.cert, d, a), "CN=proxy");
});

Deno.test("a certificate from another CA is refused", async () => {
  const [d, a] = [nonce(), nonce()];
  const mallory = await issueCert({ ca: foreignCa, name: "proxy", sans: ["10.78.0.1"] });
  const proof = await makeProof(await loadIdentity(mallory.cert, mallory.key), d, a);
  await assertRejects(() => checkProof(proof, ca.cert, d, a), /not issued by this server's CA/);
});

Deno.test("an expired certificate is refused", async () => {
  const [d, a] = [nonce(), nonce()];
  const old = await issueCert({
    ca,
    name: "proxy",
    sans: ["10.78.0.1"],
    notBefore: new Date("2000-01-01"),
    days: 1,
  });
  const proof = await makeProof(await loadIdentity(old.cert, old.key), d, a);
  await assertRejects(() => checkProof(proof, ca.cert, d, a), /not valid now/);
});

Deno.test("a proof made for other nonces (a replay) is refused", async () => {
  const proof = await makeProof(await loadIdentity(proxy.cert, proxy.key), nonce(), nonce());
  await assertRejects(() => checkProof(proof, ca.cert, nonce(), nonce()), /not signed by its key/);
});

Deno.test("someone else's certificate with our own key is refused", async () => {
  const [d, a] = [nonce(), nonce()];
  const other = await issueCert({ ca, name: "host", sans: ["10.78.0.2"] });
  const proof = await makeProof(await loadIdentity(other.cert, proxy.key), d, a);
  await assertRejects(() => checkProof(proof, ca.cert, d, a), /not signed by its key/);
});

Deno.test("garbage is a malformed proof", async () => {
  await assertRejects(
    () => checkProof(new TextEncoder().encode("{"), ca.cert, nonce(), nonce()),
    /malformed certificate proof/,
  );
});
