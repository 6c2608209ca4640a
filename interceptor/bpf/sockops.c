/* sockops (BPF_PROG_TYPE_SOCK_OPS, attach CGROUP_SOCK_OPS): TCP events of the cgroup's sockets.
 * ACTIVE_ESTABLISHED (the app's socket, handshake done):
 *   Reads: origin_store[socket] (written by connect4/6), the local address and port the kernel
 *   picked, snd_nxt/rcv_nxt.
 *   Writes: handoff_by_client[(local ip, local port)]; asks for state callbacks, so the entry is
 *   deleted when the socket closes.
 * PASSIVE_ESTABLISHED (the proxy's accepted socket, if it listens on the outbound port):
 *   Reads: handoff_by_client[peer], then deletes it.
 *   Writes: origin_store[accepted socket], only if the sequence numbers mirror the app's (the
 *   record belongs to this very connection); else counts a rejected record.
 * STATE_CB, new state TCP_CLOSE (the app's socket): deletes handoff_by_client[(local end)].
 * Both ESTABLISHED events, loopback at both ends, sockmap on: inserts the socket into
 * local_socks (the kernel removes it when the socket closes). */
#include "maps.h"

/* Both ends of the socket in the 16-byte form. Every field is read unconditionally (CTX_READ):
 * reads chosen by family inside a branch become loads the verifier refuses. */
struct ends {
    __u32 local[4];
    __u32 remote[4];
};

static __always_inline void read_ends(struct bpf_sock_ops *skops, struct ends *ends)
{
    __u32 family = CTX_READ(skops->family);
    __u32 local4 = CTX_READ(skops->local_ip4);
    __u32 remote4 = CTX_READ(skops->remote_ip4);
    ends->local[0] = CTX_READ(skops->local_ip6[0]);
    ends->local[1] = CTX_READ(skops->local_ip6[1]);
    ends->local[2] = CTX_READ(skops->local_ip6[2]);
    ends->local[3] = CTX_READ(skops->local_ip6[3]);
    ends->remote[0] = CTX_READ(skops->remote_ip6[0]);
    ends->remote[1] = CTX_READ(skops->remote_ip6[1]);
    ends->remote[2] = CTX_READ(skops->remote_ip6[2]);
    ends->remote[3] = CTX_READ(skops->remote_ip6[3]);
    if (family == AF_INET) {
        map_v4(ends->local, local4);
        map_v4(ends->remote, remote4);
    }
}

/* Put a loopback connection's socket into local_socks, keyed as seen from this end. */
static __always_inline void add_local_socket(struct bpf_sock_ops *skops, struct settings *s)
{
    if (!(s->flags & SETTING_SOCKMAP))
        return;
    struct ends ends = {};
    read_ends(skops, &ends);
    if (!is_loopback(ends.local) || !is_loopback(ends.remote))
        return;
    struct sock_key key = {};
    __builtin_memcpy(key.local_ip, ends.local, sizeof(key.local_ip));
    __builtin_memcpy(key.remote_ip, ends.remote, sizeof(key.remote_ip));
    key.local_port = skops->local_port;               /* host order */
    key.remote_port = dt_ntohl(skops->remote_port);   /* network order in the upper half */
    /* bcc rewrites map-helper calls only as whole statements, hence the variable */
    long failed = local_socks.sock_hash_update(skops, &key, BPF_ANY);
    if (!failed)
        count(COUNT_SOCKMAP_INSERTED, 1);
}

static __always_inline void on_active_established(struct bpf_sock_ops *skops)
{
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return;
    struct origin *stored = origin_store.sk_storage_get(sk, 0, 0);
    if (!stored || !stored->valid)
        return;
    struct handoff handoff = {};
    handoff.origin = *stored;
    handoff.client_snd_nxt = skops->snd_nxt;
    handoff.client_rcv_nxt = skops->rcv_nxt;
    struct ends ends = {};
    read_ends(skops, &ends);
    struct endpoint client = {};
    __builtin_memcpy(client.ip, ends.local, sizeof(client.ip));
    client.port = skops->local_port;
    handoff_by_client.update(&client, &handoff);
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void on_passive_established(struct bpf_sock_ops *skops,
                                                   struct settings *s)
{
    if (skops->local_port != s->proxy_port)
        return;
    struct ends ends = {};
    read_ends(skops, &ends);
    struct endpoint client = {};
    __builtin_memcpy(client.ip, ends.remote, sizeof(client.ip));
    client.port = dt_ntohl(skops->remote_port);
    struct handoff *handoff = handoff_by_client.lookup(&client);
    if (!handoff)
        return;
    int ours = handoff->client_snd_nxt == skops->rcv_nxt &&
               handoff->client_rcv_nxt == skops->snd_nxt;
    struct origin origin = handoff->origin;
    handoff_by_client.delete(&client);
    if (!ours) { /* left over from an earlier connection of the same client port */
        count(COUNT_RECORD_REJECTED, 1);
        return;
    }
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return;
    struct origin *stored = origin_store.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (stored)
        *stored = origin;
}

static __always_inline void on_close(struct bpf_sock_ops *skops)
{
    struct ends ends = {};
    read_ends(skops, &ends);
    struct endpoint client = {};
    __builtin_memcpy(client.ip, ends.local, sizeof(client.ip));
    client.port = skops->local_port;
    handoff_by_client.delete(&client);
}

int detour_sockops(struct bpf_sock_ops *skops)
{
    struct settings *s = current_settings();
    if (!s)
        return 1;
    switch (skops->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
        add_local_socket(skops, s);
        on_active_established(skops);
        break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
        add_local_socket(skops, s);
        on_passive_established(skops, s);
        break;
    case BPF_SOCK_OPS_STATE_CB:
        if (skops->args[1] == BPF_TCP_CLOSE)
            on_close(skops);
        break;
    }
    return 1;
}
