/* cgroup/connect4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_INET4_CONNECT).
 * Reads: the destination the app passed to connect() (user_ip4/user_port), the socket type,
 *        the calling task's uid/gid, settings and the exclusion maps (see redirect.h).
 * Writes: origin_store[socket] = the original destination; the destination itself, rewritten
 *         to 127.0.0.1:<outbound port> (TCP) or 127.0.0.1:<DNS port> (TCP/UDP port 53 with
 *         DNS capture on); counters.
 * Leaves alone: the proxy's own sockets (its uids/gids: loop prevention), 127.0.0.0/8 (but
 * for DNS, captured from any server as init does) and excluded or unselected destinations. */
#include "redirect.h"

int detour_connect4(struct bpf_sock_addr *ctx)
{
    redirect_sock_addr4(ctx);
    return 1; /* 1 = let the (possibly rewritten) call proceed */
}
