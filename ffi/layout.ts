/**
 * The layout of every C struct that crosses the FFI: its size and the offset of each field VNET
 * reads or writes, per architecture. Code that builds or reads such a struct takes its numbers
 * from `structs`, never from a literal, and tests/unit/layout_test.ts compiles the tables
 * against the C headers with both compilers (x86_64 and aarch64): a wrong number fails the build
 * of a `_Static_assert`, not a peer's link at run time.
 *
 * Why per architecture: the same declaration lays out differently. `struct epoll_event` is
 * packed on x86_64 only (12 bytes, the data at offset 4); on aarch64 it is 16 bytes with the data
 * at 8. Writing the x86_64 bytes there gave the kernel a bogus token (issue 17).
 *
 * The tables are Linux's, the platform of the data path. libpcap's structs lay out the same on
 * every 64-bit Unix (macOS included); on Windows (LLP64) `struct timeval` is 8 bytes, so
 * `struct pcap_pkthdr` differs there: ffi/libpcap.ts says so where it reads one.
 */

/** One struct: the C type, the header that declares it, its size, its fields' offsets. */
interface StructLayout {
  readonly type: string;
  readonly header: string;
  readonly size: number;
  readonly offsets: Readonly<Record<string, number>>;
}

/** Every struct VNET passes through the FFI. */
export interface Structs {
  readonly pollfd: StructLayout;
  readonly epoll_event: StructLayout;
  readonly sockaddr_in: StructLayout;
  readonly sockaddr_in6: StructLayout;
  readonly sockaddr_un: StructLayout;
  readonly sockaddr_ll: StructLayout;
  readonly sock_filter: StructLayout;
  readonly sock_fprog: StructLayout;
  readonly virtio_net_hdr: StructLayout;
  readonly rlimit: StructLayout;
  readonly timespec: StructLayout;
  readonly pcap_pkthdr: StructLayout;
  readonly pcap_stat: StructLayout;
  readonly pcap_if: StructLayout;
  readonly pcap_addr: StructLayout;
  readonly bpf_program: StructLayout;
  readonly bpf_insn: StructLayout;
  readonly iovec: StructLayout;
  readonly msghdr: StructLayout;
  readonly mmsghdr: StructLayout;
  readonly cmsghdr: StructLayout;
  readonly nlmsghdr: StructLayout;
  readonly nlmsgerr: StructLayout;
  readonly inet_diag_req_v2: StructLayout;
  readonly inet_diag_sockid: StructLayout;
  readonly inet_diag_msg: StructLayout;
}

export type Arch = typeof Deno.build.arch;

const X86_64: Structs = {
  pollfd: {
    type: "struct pollfd",
    header: "poll.h",
    size: 8,
    offsets: { fd: 0, events: 4, revents: 6 },
  },
  epoll_event: {
    type: "struct epoll_event",
    header: "sys/epoll.h",
    size: 12,
    offsets: { events: 0, data: 4 },
  },
  sockaddr_in: {
    type: "struct sockaddr_in",
    header: "netinet/in.h",
    size: 16,
    offsets: { sin_family: 0, sin_port: 2, sin_addr: 4 },
  },
  sockaddr_in6: {
    type: "struct sockaddr_in6",
    header: "netinet/in.h",
    size: 28,
    offsets: { sin6_family: 0, sin6_port: 2, sin6_flowinfo: 4, sin6_addr: 8, sin6_scope_id: 24 },
  },
  sockaddr_un: {
    type: "struct sockaddr_un",
    header: "sys/un.h",
    size: 110,
    offsets: { sun_family: 0, sun_path: 2 },
  },
  sockaddr_ll: {
    type: "struct sockaddr_ll",
    header: "linux/if_packet.h",
    size: 20,
    offsets: {
      sll_family: 0,
      sll_protocol: 2,
      sll_ifindex: 4,
      sll_hatype: 8,
      sll_pkttype: 10,
      sll_halen: 11,
      sll_addr: 12,
    },
  },
  sock_filter: {
    type: "struct sock_filter",
    header: "linux/filter.h",
    size: 8,
    offsets: { code: 0, jt: 2, jf: 3, k: 4 },
  },
  sock_fprog: {
    type: "struct sock_fprog",
    header: "linux/filter.h",
    size: 16,
    offsets: { len: 0, filter: 8 },
  },
  virtio_net_hdr: {
    type: "struct virtio_net_hdr",
    header: "linux/virtio_net.h",
    size: 10,
    offsets: { flags: 0, gso_type: 1, hdr_len: 2, gso_size: 4, csum_start: 6, csum_offset: 8 },
  },
  rlimit: {
    type: "struct rlimit",
    header: "sys/resource.h",
    size: 16,
    offsets: { rlim_cur: 0, rlim_max: 8 },
  },
  // clock_gettime's answer, and the SCM_TIMESTAMPNS control message's data (64-bit time_t).
  timespec: {
    type: "struct timespec",
    header: "time.h",
    size: 16,
    offsets: { tv_sec: 0, tv_nsec: 8 },
  },
  pcap_pkthdr: {
    type: "struct pcap_pkthdr",
    header: "pcap/pcap.h",
    size: 24,
    offsets: { ts: 0, caplen: 16, len: 20 },
  },
  pcap_stat: {
    type: "struct pcap_stat",
    header: "pcap/pcap.h",
    size: 12,
    offsets: { ps_recv: 0, ps_drop: 4, ps_ifdrop: 8 },
  },
  pcap_if: {
    type: "struct pcap_if",
    header: "pcap/pcap.h",
    size: 40,
    offsets: { next: 0, name: 8, description: 16, addresses: 24, flags: 32 },
  },
  pcap_addr: {
    type: "struct pcap_addr",
    header: "pcap/pcap.h",
    size: 40,
    offsets: { next: 0, addr: 8, netmask: 16, broadaddr: 24, dstaddr: 32 },
  },
  bpf_program: {
    type: "struct bpf_program",
    header: "pcap/pcap.h",
    size: 16,
    offsets: { bf_len: 0, bf_insns: 8 },
  },
  bpf_insn: {
    type: "struct bpf_insn",
    header: "pcap/pcap.h",
    size: 8,
    offsets: { code: 0, jt: 2, jf: 3, k: 4 },
  },
  iovec: {
    type: "struct iovec",
    header: "sys/uio.h",
    size: 16,
    offsets: { iov_base: 0, iov_len: 8 },
  },
  // The kernel's msghdr: msg_iovlen and msg_controllen are size_t (musl declares them int and
  // socklen_t plus padding at the same offsets, so a 64-bit write with a zero high word fits both).
  msghdr: {
    type: "struct msghdr",
    header: "sys/socket.h",
    size: 56,
    offsets: {
      msg_name: 0,
      msg_namelen: 8,
      msg_iov: 16,
      msg_iovlen: 24,
      msg_control: 32,
      msg_controllen: 40,
      msg_flags: 48,
    },
  },
  mmsghdr: {
    type: "struct mmsghdr",
    header: "sys/socket.h",
    size: 64,
    offsets: { msg_hdr: 0, msg_len: 56 },
  },
  // A control message's data starts right after this header (CMSG_DATA), and each message takes
  // CMSG_ALIGN(cmsg_len) bytes: both align to sizeof(size_t), 8.
  cmsghdr: {
    type: "struct cmsghdr",
    header: "sys/socket.h",
    size: 16,
    offsets: { cmsg_len: 0, cmsg_level: 8, cmsg_type: 12 },
  },
  // Netlink's header, in host byte order; a message's body starts at NLMSG_HDRLEN, 16.
  nlmsghdr: {
    type: "struct nlmsghdr",
    header: "linux/netlink.h",
    size: 16,
    offsets: { nlmsg_len: 0, nlmsg_type: 4, nlmsg_flags: 6, nlmsg_seq: 8, nlmsg_pid: 12 },
  },
  // The body of an NLMSG_ERROR answer: error 0 is an acknowledgement, else -errno.
  nlmsgerr: {
    type: "struct nlmsgerr",
    header: "linux/netlink.h",
    size: 20,
    offsets: { error: 0, msg: 4 },
  },
  // sock_diag's request (src/io/sock_diag.ts).
  inet_diag_req_v2: {
    type: "struct inet_diag_req_v2",
    header: "linux/inet_diag.h",
    size: 56,
    offsets: { sdiag_family: 0, sdiag_protocol: 1, idiag_ext: 2, idiag_states: 4, id: 8 },
  },
  // A socket's endpoints: ports and addresses in network byte order, an IPv4 address in the
  // first 4 bytes of its 16.
  inet_diag_sockid: {
    type: "struct inet_diag_sockid",
    header: "linux/inet_diag.h",
    size: 48,
    offsets: {
      idiag_sport: 0,
      idiag_dport: 2,
      idiag_src: 4,
      idiag_dst: 20,
      idiag_if: 36,
      idiag_cookie: 40,
    },
  },
  // sock_diag's answer: the socket found, its state and its own endpoints and cookie.
  inet_diag_msg: {
    type: "struct inet_diag_msg",
    header: "linux/inet_diag.h",
    size: 72,
    offsets: { idiag_family: 0, idiag_state: 1, id: 4, idiag_inode: 68 },
  },
};

const AARCH64: Structs = {
  ...X86_64,
  // Not packed on aarch64: the 64-bit data is aligned to 8.
  epoll_event: { ...X86_64.epoll_event, size: 16, offsets: { events: 0, data: 8 } },
};

/** Each architecture's tables (the layout test checks them all). */
export const LAYOUTS: Readonly<Record<Arch, Structs>> = { x86_64: X86_64, aarch64: AARCH64 };

/** This process's layouts. */
export const structs: Structs = LAYOUTS[Deno.build.arch];

/**
 * The address of a view's first byte, its offset included. The backing store never moves; keep
 * the view referenced for as long as C may use the address.
 */
export function addressOf(bytes: Uint8Array): number {
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

/** Writes a 64-bit pointer or size_t (little-endian, below 2^53) without a BigInt. */
export function setWord(view: DataView, at: number, value: number): void {
  view.setUint32(at, value % 0x1_0000_0000, true);
  view.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
}
