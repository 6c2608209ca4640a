/* cgroup/sendmsg4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_UDP4_SENDMSG): sendto() on an
 * unconnected UDP socket (a connected one was already handled by connect4).
 * Reads: the datagram's destination (user_ip4/user_port), uid/gid, settings.
 * Writes: for port 53 with DNS capture on: origin_store[socket] = the server asked, and the
 *         destination, rewritten to 127.0.0.1:<DNS port>; counters.
 * Leaves alone: every other datagram, and the proxy's own upstream queries (its uid/gid). */
#include "redirect.h"

int detour_sendmsg4(struct bpf_sock_addr *ctx)
{
    redirect_sock_addr4(ctx);
    return 1; /* 1 = let the (possibly rewritten) call proceed */
}
