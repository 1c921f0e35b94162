import { summarizeSshError } from "../../src/link/ssh.ts";
import { assert, assertEquals } from "./assert.ts";

Deno.test("ssh errors: the changed-host-key banner becomes one readable line", () => {
  const stderr = [
    "@".repeat(59),
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
    "@".repeat(59),
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
    "Someone could be eavesdropping on you right now (man-in-the-middle attack)!",
    "It is also possible that a host key has just been changed.",
    "The fingerprint for the ED25519 key sent by the remote host is",
    "SHA256:Vnxa52AjD9tzPoQstwcWy+JZ01y0FgD2IGAGtpeHPbA.",
    "Please contact your system administrator.",
    "Add correct host key in /k/known_hosts to get rid of this message.",
    "Offending ED25519 key in /k/known_hosts:1",
    "  remove with:",
    '  ssh-keygen -f "/k/known_hosts" -R "10.78.0.2"',
    "Host key for 10.78.0.2 has changed and you have requested strict checking.",
    "Host key verification failed.",
    "",
  ].join("\n");
  const line = summarizeSshError(stderr);
  assertEquals(
    line,
    "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!; The fingerprint for the ED25519 key " +
      "sent by the remote host is SHA256:Vnxa52AjD9tzPoQstwcWy+JZ01y0FgD2IGAGtpeHPbA; " +
      "Offending ED25519 key in /k/known_hosts:1; Host key for 10.78.0.2 has changed and you " +
      "have requested strict checking; Host key verification failed",
  );
  assert(!line.includes("\n"));
});

Deno.test("ssh errors: short complaints pass through, CRLF and 'Permanently added' dropped", () => {
  assertEquals(
    summarizeSshError(
      "Warning: Permanently added 'x' (ED25519) to the list of known hosts.\r\n" +
        "root@gw: Permission denied (publickey).\r\n",
    ),
    "root@gw: Permission denied (publickey)",
  );
  assertEquals(summarizeSshError(""), "");
});
