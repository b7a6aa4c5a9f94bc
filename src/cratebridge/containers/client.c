/* cratebridge-docker, compiled: the same client of the run's broker as shim.py.
 *
 * Engines start `docker` several times per step; the Python client costs about
 * 8 ms of CPU to start, this one well under 1 ms. It speaks the same frames
 * (a channel byte, a 4-byte big-endian length, the payload) and sends the same
 * one JSON request: {"argv", "tool", "cwd", "env"}, every string as Python's
 * os.fsdecode gives it (bytes that are not UTF-8 as the surrogates U+DC80..U+DCFF),
 * escaped as json.dumps escapes it (ASCII only). It holds no policy and parses
 * nothing of what the broker says but frames. cratebridge.containers.client
 * builds it; the sandbox uses it when it is built from this very source, and
 * shim.py otherwise. tests/test_client.py holds the two to the same answers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { REQUEST, STDIN_, STDOUT_, STDERR_, EXIT_, CID };
#define MAX_FRAME (4u * 1024u * 1024u)
#define BROKER_ENV "CRATEBRIDGE_BROKER"

extern char **environ;

static const char *const slurm_tools[] = {"sbatch", "squeue", "sacct", "scancel", "scontrol",
                                          "sinfo", "sshare", "sacctmgr", NULL};

/* -- a growing buffer, for the request ----------------------------------- */

struct text { char *data; size_t len, cap; };

static void put(struct text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (t->len + n + 1 > cap)
            cap *= 2;
        char *data = realloc(t->data, cap);
        if (!data) {
            fputs("cratebridge-docker: out of memory\n", stderr);
            _exit(125);
        }
        t->data = data;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
}

static void puts_(struct text *t, const char *s) { put(t, s, strlen(s)); }

static void put_u16(struct text *t, unsigned code)
{
    char escape[8];
    snprintf(escape, sizeof escape, "\\u%04x", code);
    put(t, escape, 6);
}

/* The code point of the UTF-8 sequence at s (n bytes left) in *code, and its
 * length; 0 when it is not one Python's decoder accepts. */
static size_t utf8(const unsigned char *s, size_t n, unsigned *code)
{
    size_t len;
    unsigned c, min;
    if (s[0] < 0x80) { *code = s[0]; return 1; }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) { len = 2; c = s[0] & 0x1f; min = 0x80; }
    else if (s[0] >= 0xe0 && s[0] <= 0xef) { len = 3; c = s[0] & 0x0f; min = 0x800; }
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) { len = 4; c = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *code = c;
    return len;
}

/* bytes as a JSON string: os.fsdecode's text, as json.dumps writes it */
static void put_string(struct text *t, const char *bytes, size_t n)
{
    const unsigned char *s = (const unsigned char *)bytes;
    put(t, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned code;
        size_t len = utf8(s + i, n - i, &code);
        if (len == 0) {  /* surrogateescape: one surrogate for each byte */
            put_u16(t, 0xdc00 + s[i]);
            i++;
            continue;
        }
        i += len;
        if (code == '"') put(t, "\\\"", 2);
        else if (code == '\\') put(t, "\\\\", 2);
        else if (code < 0x20) put_u16(t, code);
        else if (code < 0x80) { char c = (char)code; put(t, &c, 1); }
        else if (code < 0x10000) put_u16(t, code);
        else {
            code -= 0x10000;
            put_u16(t, 0xd800 + (code >> 10));
            put_u16(t, 0xdc00 + (code & 0x3ff));
        }
    }
    put(t, "\"", 1);
}

static void put_cstring(struct text *t, const char *s) { put_string(t, s, strlen(s)); }

/* -- frames ----------------------------------------------------------------- */

static int send_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t sent = send(fd, p, n, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += sent;
        n -= (size_t)sent;
    }
    return 0;
}

static int send_frame(int fd, int channel, const void *payload, size_t n)
{
    unsigned char head[5] = {(unsigned char)channel, (unsigned char)(n >> 24),
                             (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                             (unsigned char)n};
    return send_all(fd, head, 5) || send_all(fd, payload, n) ? -1 : 0;
}

static int read_exactly(int fd, void *buffer, size_t n)
{
    char *p = buffer;
    while (n > 0) {
        ssize_t got = recv(fd, p, n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t done = write(fd, p, n);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return;  /* a closed stdout: the exit code still matters */
        p += done;
        n -= (size_t)done;
    }
}

static void *pump_stdin(void *arg)
{
    int sock = *(int *)arg;
    static char chunk[65536];
    for (;;) {
        ssize_t got = read(0, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                send_frame(sock, STDIN_, "", 0);
            return NULL;
        }
        if (send_frame(sock, STDIN_, chunk, (size_t)got))
            return NULL;
    }
}

/* -- the run ---------------------------------------------------------------- */

static void on_signal(int signum) { _exit(128 + signum); }

static int fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs("cratebridge-docker: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    return 125;
}

/* The id in a file of its own first, then linked into place: an engine
 * polling for the file never reads it empty; one already there is an error. */
static int write_cidfile(const char *cidfile, const char *cid)
{
    char partial[4096];
    if (snprintf(partial, sizeof partial, "%s.%d.partial", cidfile, (int)getpid())
            >= (int)sizeof partial)
        return fail("cannot write the container id file %s: name too long", cidfile);
    int fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return fail("cannot write the container id file %s: %s", cidfile, strerror(errno));
    size_t n = strlen(cid);
    ssize_t written = write(fd, cid, n);
    int failed = written != (ssize_t)n || close(fd) != 0;
    if (!failed && link(partial, cidfile) != 0)
        failed = 1;
    int saved = errno;
    unlink(partial);
    if (failed)
        return fail("cannot write the container id file %s: %s", cidfile, strerror(saved));
    return 0;
}

static void put_request(struct text *t, int argc, char **argv, const char *tool, const char *cwd)
{
    puts_(t, "{\"argv\": [");
    for (int i = 1; i < argc; i++) {
        if (i > 1)
            puts_(t, ", ");
        put_cstring(t, argv[i]);
    }
    puts_(t, "], \"tool\": ");
    put_cstring(t, tool);
    puts_(t, ", \"cwd\": ");
    put_cstring(t, cwd);
    puts_(t, ", \"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        /* as Python's os.environ: split at the first '=' after the first byte,
         * skip an entry without one, and the first of a name wins */
        const char *eq = (*e)[0] ? strchr(*e + 1, '=') : NULL;
        if (!eq)
            continue;
        size_t key = (size_t)(eq - *e);
        int seen = 0;
        for (char **before = environ; before < e && !seen; before++) {
            const char *other = (*before)[0] ? strchr(*before + 1, '=') : NULL;
            seen = other && (size_t)(other - *before) == key && !memcmp(*before, *e, key);
        }
        if (seen)
            continue;
        if (!first)
            puts_(t, ", ");
        first = 0;
        put_string(t, *e, key);
        puts_(t, ": ");
        put_cstring(t, eq + 1);
    }
    puts_(t, "}}");
}

static char *missing_folder;  /* the broker's folder, when it is the one we cannot enter */

static int connect_broker(const char *address)
{
    /* by its folder: a socket's path is limited to 108 bytes, a run folder's is not */
    const char *slash = strrchr(address, '/');
    const char *name = slash ? slash + 1 : address;
    struct sockaddr_un where = {.sun_family = AF_UNIX};
    if (strlen(name) >= sizeof where.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(where.sun_path, name);
    int here = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (here < 0)
        return -1;
    int sock = -1;
    char *folder = slash ? strndup(address, (size_t)(slash - address)) : strdup(".");
    if (folder && chdir(folder[0] ? folder : "/") != 0) {
        int saved = errno;
        missing_folder = folder;
        folder = NULL;
        errno = saved;
    } else if (folder) {
        sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (sock >= 0 && connect(sock, (struct sockaddr *)&where, sizeof where) != 0) {
            int saved = errno;
            close(sock);
            sock = -1;
            errno = saved;
        }
        int saved = errno;
        if (fchdir(here) != 0 && sock >= 0) {
            close(sock);
            sock = -1;
        } else {
            errno = saved;
        }
    }
    int saved = errno;
    free(folder);
    close(here);
    errno = saved;
    return sock;
}

int main(int argc, char **argv)
{
    const char *address = getenv(BROKER_ENV);
    if (!address || !address[0]) {
        fputs("cratebridge-docker: CRATEBRIDGE_BROKER is not set; this docker works only "
              "inside a cratebridge run\n", stderr);
        return 125;
    }
    const char *invoked = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    const char *tool = "docker";
    for (int i = 0; slurm_tools[i]; i++)
        if (!strcmp(invoked, slurm_tools[i]))
            tool = slurm_tools[i];
    char *cwd = getcwd(NULL, 0);
    if (!cwd)
        return fail("cannot name the working folder: %s", strerror(errno));
    struct text request = {0};
    put_request(&request, argc, argv, tool, cwd);

    int sock = connect_broker(address);
    if (sock < 0)  /* as Python words an OSError */
        return fail("the run's container broker does not answer ([Errno %d] %s%s%s%s); "
                    "no container can start now", errno, strerror(errno),
                    missing_folder ? ": '" : "", missing_folder ? missing_folder : "",
                    missing_folder ? "'" : "");
    /* Stopping this client stops the container: the broker kills it when we go. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);
    if (send_frame(sock, REQUEST, request.data, request.len))
        return fail("the broker closed the connection");
    free(request.data);
    pthread_t pump;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (pthread_create(&pump, &attr, pump_stdin, &sock) != 0)
        return fail("cannot start: %s", strerror(errno));

    char *payload = NULL;
    for (;;) {
        unsigned char head[5];
        if (read_exactly(sock, head, 5))
            break;
        uint32_t size = (uint32_t)head[1] << 24 | (uint32_t)head[2] << 16 |
                        (uint32_t)head[3] << 8 | head[4];
        if (size > MAX_FRAME)
            break;
        char *grown = realloc(payload, size + 1);
        if (!grown)
            break;
        payload = grown;
        if (size && read_exactly(sock, payload, size))
            break;
        payload[size] = '\0';
        if (head[0] == STDOUT_ || head[0] == STDERR_) {
            write_all(head[0] == STDOUT_ ? 1 : 2, payload, size);
        } else if (head[0] == CID) {  /* the engine asked for --cidfile: written with its rights */
            char *newline = memchr(payload, '\n', size);  /* the id, a newline, the file */
            if (newline) {
                *newline = '\0';
                if (write_cidfile(newline + 1, payload))
                    return 125;
            }
        } else if (head[0] == EXIT_) {
            return size ? atoi(payload) : 125;
        }
    }
    fputs("cratebridge-docker: the broker closed the connection\n", stderr);
    return 125;
}
