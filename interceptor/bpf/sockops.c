/* sockops (BPF_PROG_TYPE_SOCK_OPS, attach CGROUP_SOCK_OPS), on ACTIVE_ESTABLISHED only.
 * Reads: the socket cookie, the now-known local address and port of the client socket,
 *        origin_by_cookie (written by connect4).
 * Writes: origin_by_client[(local ip, local port)] = original destination; deletes the cookie
 *         entry. Needed because connect4 runs before the kernel picks the source port. */
#include "maps.h"

int detour_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    if (skops->family != AF_INET)
        return 1;
    __u64 cookie = bpf_get_socket_cookie(skops);
    struct origin *found = origin_by_cookie.lookup(&cookie);
    if (!found)
        return 1;
    struct origin orig = *found;
    struct client_end end = {};
    end.ip4 = skops->local_ip4;
    end.port = skops->local_port; /* host order in bpf_sock_ops */
    origin_by_client.update(&end, &orig);
    origin_by_cookie.delete(&cookie);
    return 1;
}
