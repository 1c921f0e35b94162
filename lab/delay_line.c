/*
 * A userspace WAN delay line for the lab: forwards every frame between two interfaces (AF_PACKET
 * raw sockets) after a fixed one-way delay, through a bounded FIFO per direction. This kernel has
 * no netem, so the lab's WAN gets its round-trip time here. Loss is added separately, with
 * nftables (lab/delay_line.ts).
 *
 *   delay_line IF_A IF_B DELAY_US [QUEUE_FRAMES]
 *
 * One thread, one ppoll over both sockets with the time to the next frame due as its timeout,
 * so frames leave within microseconds of their due time and nothing spins while idle. A frame
 * that finds its direction's FIFO full is dropped and counted (a router's tail drop). Frames
 * larger than a slot (offloads left on) are dropped and counted too: the lab turns the WAN
 * veths' segmentation offloads off, as a real path carries frames of at most the MTU.
 *
 * On SIGTERM or SIGINT it prints its counters as one JSON line and exits 0. It prints "ready"
 * once both sockets are bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Room for a 1500-byte MTU frame with its Ethernet header, and some slack (jumbo not carried). */
#define SLOT_BYTES 2048

struct fifo {
  unsigned char *data; /* slots * SLOT_BYTES */
  uint32_t *len;
  uint64_t *due_ns;
  unsigned slots, head, count;
  uint64_t forwarded, full_drops, oversize_drops, send_errors;
};

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) {
  (void)sig;
  stopping = 1;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int open_port(const char *ifname) {
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
  if (fd < 0) {
    perror("socket(AF_PACKET)");
    exit(1);
  }
  unsigned idx = if_nametoindex(ifname);
  if (idx == 0) {
    fprintf(stderr, "delay_line: no interface %s\n", ifname);
    exit(1);
  }
  /* Our own sends on this interface are not frames to forward back. */
  int one = 1;
  if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) {
    perror("PACKET_IGNORE_OUTGOING");
    exit(1);
  }
  setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
  int buf = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
  struct sockaddr_ll sll = {0};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)idx;
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
    perror("bind");
    exit(1);
  }
  return fd;
}

static void fifo_init(struct fifo *q, unsigned slots) {
  memset(q, 0, sizeof *q);
  q->slots = slots;
  q->data = malloc((size_t)slots * SLOT_BYTES);
  q->len = calloc(slots, sizeof *q->len);
  q->due_ns = calloc(slots, sizeof *q->due_ns);
  if (!q->data || !q->len || !q->due_ns) {
    fprintf(stderr, "delay_line: out of memory\n");
    exit(1);
  }
}

/* Reads every frame waiting on `in` into `q`, each due `delay` from now. */
static void take(int in, struct fifo *q, uint64_t delay) {
  for (;;) {
    unsigned char scratch[SLOT_BYTES];
    unsigned tail = (q->head + q->count) % q->slots;
    int full = q->count == q->slots;
    unsigned char *dst = full ? scratch : q->data + (size_t)tail * SLOT_BYTES;
    /* MSG_TRUNC: the frame's real length, to tell a frame too big for a slot. */
    ssize_t n = recv(in, dst, SLOT_BYTES, MSG_TRUNC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return; /* EAGAIN: drained */
    }
    if (n > SLOT_BYTES) {
      q->oversize_drops++;
      continue;
    }
    if (full) {
      q->full_drops++;
      continue;
    }
    q->len[tail] = (uint32_t)n;
    q->due_ns[tail] = now_ns() + delay;
    q->count++;
  }
}

/*
 * Sends every frame of `q` that is due. Returns 1 if the device refused one for now (its queue
 * is full: the frame keeps its place and is tried again shortly), else 0.
 */
static int give(int out, struct fifo *q, uint64_t now) {
  while (q->count > 0 && q->due_ns[q->head] <= now) {
    ssize_t n = send(out, q->data + (size_t)q->head * SLOT_BYTES, q->len[q->head], 0);
    if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) return 1;
    if (n < 0) q->send_errors++;
    else q->forwarded++;
    q->head = (q->head + 1) % q->slots;
    q->count--;
  }
  return 0;
}

static void report(const char *name, const struct fifo *q, const char *sep) {
  printf("\"%s\":{\"forwarded\":%llu,\"fullDrops\":%llu,\"oversizeDrops\":%llu,"
         "\"sendErrors\":%llu}%s",
         name, (unsigned long long)q->forwarded, (unsigned long long)q->full_drops,
         (unsigned long long)q->oversize_drops, (unsigned long long)q->send_errors, sep);
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: delay_line IF_A IF_B DELAY_US [QUEUE_FRAMES]\n");
    return 2;
  }
  char *end;
  unsigned long delay_us = strtoul(argv[3], &end, 10);
  if (*end || delay_us > 10000000) {
    fprintf(stderr, "delay_line: DELAY_US must be 0..10000000, got %s\n", argv[3]);
    return 2;
  }
  unsigned long slots = argc == 5 ? strtoul(argv[4], &end, 10) : 8192;
  if ((argc == 5 && *end) || slots < 16 || slots > 1u << 20) {
    fprintf(stderr, "delay_line: QUEUE_FRAMES must be 16..1048576\n");
    return 2;
  }
  uint64_t delay = (uint64_t)delay_us * 1000;
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  int fd[2] = {open_port(argv[1]), open_port(argv[2])};
  struct fifo q[2]; /* q[0]: A -> B, q[1]: B -> A */
  fifo_init(&q[0], (unsigned)slots);
  fifo_init(&q[1], (unsigned)slots);
  printf("ready\n");
  fflush(stdout);

  struct pollfd pfd[2] = {{.fd = fd[0], .events = POLLIN}, {.fd = fd[1], .events = POLLIN}};
  while (!stopping) {
    uint64_t now = now_ns();
    int blocked = give(fd[1], &q[0], now) | give(fd[0], &q[1], now);
    /* Sleep until a frame arrives or the next one is due. */
    uint64_t next = UINT64_MAX;
    for (int d = 0; d < 2; d++) {
      if (q[d].count && q[d].due_ns[q[d].head] < next) next = q[d].due_ns[q[d].head];
    }
    struct timespec ts, *timeout = NULL;
    if (next != UINT64_MAX) {
      uint64_t wait = next > now ? next - now : 0;
      if (blocked && wait < 50000) wait = 50000; /* a full device queue: retry in 50 us */
      ts.tv_sec = (time_t)(wait / 1000000000ull);
      ts.tv_nsec = (long)(wait % 1000000000ull);
      timeout = &ts;
    }
    int r = ppoll(pfd, 2, timeout, NULL);
    if (r < 0 && errno != EINTR) {
      perror("ppoll");
      return 1;
    }
    if (r > 0) {
      if (pfd[0].revents & POLLIN) take(fd[0], &q[0], delay);
      if (pfd[1].revents & POLLIN) take(fd[1], &q[1], delay);
    }
  }
  printf("{");
  report("aToB", &q[0], ",");
  report("bToA", &q[1], "");
  printf("}\n");
  return 0;
}
