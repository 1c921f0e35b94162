/**
 * The one-instruction classic BPF program `ret #0`, which accepts nothing: attached to sockets
 * and pcap handles that only inject, which would otherwise get a copy of every frame. The kernel
 * wants it as a `struct sock_fprog` (SO_ATTACH_FILTER), libpcap as a `struct bpf_program`
 * (pcap_setfilter); the two differ only in the width of their length field (ffi/layout.ts).
 */
import { structs } from "./layout.ts";

const BPF_RET_K = 0x06;

/**
 * The program as `kind` lays it out, and the instruction it points to: the caller keeps
 * `insns` referenced until the call that reads the program has returned (a fresh ArrayBuffer is
 * off-heap, so its address is stable meanwhile).
 */
export function acceptNothing(
  kind: "sock_fprog" | "bpf_program",
): { program: Uint8Array<ArrayBuffer>; insns: ArrayBuffer } {
  const insns = new ArrayBuffer(structs.bpf_insn.size);
  // k = 0; host byte order, as the kernel and libpcap read it
  new DataView(insns).setUint16(structs.bpf_insn.offsets.code, BPF_RET_K, true);
  const layout = structs[kind];
  const [lenAt, insnsAt] = kind === "sock_fprog"
    ? [structs.sock_fprog.offsets.len, structs.sock_fprog.offsets.filter]
    : [structs.bpf_program.offsets.bf_len, structs.bpf_program.offsets.bf_insns];
  const program = new DataView(new ArrayBuffer(layout.size));
  if (kind === "sock_fprog") program.setUint16(lenAt, 1, true);
  else program.setUint32(lenAt, 1, true);
  program.setBigUint64(
    insnsAt,
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(insns))),
    true,
  );
  return { program: new Uint8Array(program.buffer), insns };
}
