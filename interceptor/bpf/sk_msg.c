/* sk_msg (BPF_PROG_TYPE_SK_MSG, attached to the local_socks sockhash as SK_MSG_VERDICT): runs on
 * every sendmsg() of a socket that sockops put into local_socks.
 * Reads: the message's socket addresses and ports, settings (the sockmap switch).
 * Writes: nothing in maps but counters; redirects the message straight into the receive queue
 *         of the connection's other end (its key is ours mirrored), skipping TCP/IP and lo.
 * When the other end is not in local_socks (not in the cgroup, or sockmap off), the message
 * takes the normal path: SK_PASS either way. */
#include "maps.h"

int detour_sk_msg(struct sk_msg_md *msg)
{
    struct settings *s = current_settings();
    if (!s || !(s->flags & SETTING_SOCKMAP))
        return SK_PASS;
    /* Every field read unconditionally (see CTX_READ), the family decides afterwards. */
    __u32 family = CTX_READ(msg->family);
    __u32 local4 = CTX_READ(msg->local_ip4);
    __u32 remote4 = CTX_READ(msg->remote_ip4);
    struct sock_key peer = {};
    peer.local_ip[0] = CTX_READ(msg->remote_ip6[0]);
    peer.local_ip[1] = CTX_READ(msg->remote_ip6[1]);
    peer.local_ip[2] = CTX_READ(msg->remote_ip6[2]);
    peer.local_ip[3] = CTX_READ(msg->remote_ip6[3]);
    peer.remote_ip[0] = CTX_READ(msg->local_ip6[0]);
    peer.remote_ip[1] = CTX_READ(msg->local_ip6[1]);
    peer.remote_ip[2] = CTX_READ(msg->local_ip6[2]);
    peer.remote_ip[3] = CTX_READ(msg->local_ip6[3]);
    if (family == AF_INET) {
        map_v4(peer.local_ip, remote4);
        map_v4(peer.remote_ip, local4);
    }
    peer.local_port = dt_ntohl(msg->remote_port); /* network order in the upper half */
    peer.remote_port = msg->local_port;           /* host order */
    __u32 size = msg->size;
    /* bcc rewrites map-helper calls only as whole statements, hence the variable */
    long verdict = local_socks.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
    if (verdict == SK_PASS) {
        count(COUNT_SOCKMAP_REDIRECTED, 1);
        count(COUNT_SOCKMAP_BYTES, size);
    }
    return SK_PASS;
}
