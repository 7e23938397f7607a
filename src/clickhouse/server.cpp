#include "clickhouse/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "base/errno_error.h"

namespace liveio::clickhouse {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

bool is_executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

Result<void> write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    out.close();
    if (!out) return make_error(EIO, fmt::format("cannot write {}", path));
    return {};
}

// Last `lines` lines of a file, or "" when it cannot be read.
std::string tail_of(const std::string& path, size_t lines) {
    std::ifstream in(path);
    if (!in) return {};
    std::deque<std::string> last;
    std::string line;
    while (std::getline(in, line)) {
        last.push_back(std::move(line));
        if (last.size() > lines) last.pop_front();
    }
    std::string out;
    for (auto& l : last) out += l + "\n";
    return out;
}

std::string config_xml(const std::string& dir, const ServerPorts& ports, const ServerOptions& o) {
    std::string listen_hosts;
    for (const std::string& host : o.listen_hosts)
        listen_hosts += fmt::format("    <listen_host>{}</listen_host>\n", host);
    // Every path the server would otherwise take from its compiled-in defaults
    // (/var/lib/clickhouse, /var/log/clickhouse-server, ...) is set explicitly to our directory.
    return fmt::format(
        R"(<?xml version="1.0"?>
<!-- Written by liveio's ClickHouse test bed; private to this server instance. -->
<yandex>
    <logger>
        <level>{log_level}</level>
        <log>{dir}/log/server.log</log>
        <errorlog>{dir}/log/server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <display_name>liveio-{http}</display_name>
{listen_hosts}
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>{interserver_host}</interserver_http_host>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <umask>027</umask>
    <mlock_executable>false</mlock_executable>
    <max_connections>256</max_connections>
    <!-- On SIGTERM the server waits for each idle kept-alive HTTP connection to reach this
         timeout before it exits, so this bounds how long a stop waits for a client that still
         holds its connection (HttpClient reconnects when the server closed an idle one). -->
    <keep_alive_timeout>1</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
{extra}
</yandex>
)",
        fmt::arg("log_level", o.log_level), fmt::arg("dir", dir),
        fmt::arg("listen_hosts", listen_hosts), fmt::arg("interserver_host", o.interserver_host),
        fmt::arg("http", ports.http), fmt::arg("tcp", ports.tcp),
        fmt::arg("interserver", ports.interserver), fmt::arg("extra", o.extra_config));
}

std::string users_xml(const ServerOptions& o) {
    std::string networks;
    for (const std::string& net : o.allowed_networks) networks += fmt::format("<ip>{}</ip>", net);
    return fmt::format(R"(<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>in_order</load_balancing>
            {settings}
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>{networks}</networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
)",
                       fmt::arg("settings", o.profile_settings), fmt::arg("networks", networks));
}

// A fresh directory under $TMPDIR (or /tmp).
Result<std::string> make_temp_dir(std::string_view prefix) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = fmt::format("{}/{}XXXXXX", (tmp && *tmp) ? tmp : "/tmp", prefix);
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) return errno_error(errno, fmt::format("mkdtemp {}", tmpl));
    return std::string(buf.data());
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return fmt::format("was killed by signal {} ({})", WTERMSIG(status),
                           ::strsignal(WTERMSIG(status)));
    return fmt::format("changed state (wait status {:#x})", status);
}

// Waits for `pid` until the deadline; true when it was reaped (status in *status).
bool wait_exit(pid_t pid, Clock::time_point deadline, int* status) {
    for (;;) {
        pid_t r = ::waitpid(pid, status, WNOHANG);
        if (r == pid) return true;
        if (r < 0 && errno == ECHILD) {
            *status = 0;
            return true;
        }
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// Hands `dir` and everything below it to uid:gid (18.16 refuses a data directory that is not
// its user's).
Result<void> chown_tree(const std::string& dir, uid_t uid, gid_t gid) {
    std::error_code ec;
    if (::lchown(dir.c_str(), uid, gid) != 0)
        return errno_error(errno, fmt::format("chown {}", dir));
    for (auto it = fs::recursive_directory_iterator(dir, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (::lchown(it->path().c_str(), uid, gid) != 0)
            return errno_error(errno, fmt::format("chown {}", it->path().string()));
    if (ec) return make_error(ec.value(), fmt::format("walking {}: {}", dir, ec.message()));
    return {};
}

struct UserIds {
    uid_t uid;
    gid_t gid;
};

Result<UserIds> lookup_user(const std::string& name) {
    passwd pw{};
    passwd* found = nullptr;
    std::vector<char> buf(16384);
    const int rc = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found);
    if (rc != 0 || found == nullptr)
        return make_error(rc ? rc : ENOENT, fmt::format("no user '{}'", name));
    return UserIds{pw.pw_uid, pw.pw_gid};
}

}  // namespace

std::string service_user() {
    if (::geteuid() != 0 || !lookup_user("clickhouse")) return "";
    return "clickhouse";
}

Result<std::string> find_server_binary() {
    if (const char* env = std::getenv("CLICKHOUSE_SERVER"); env && *env) {
        if (is_executable(env)) return std::string(env);
        return make_error(ENOENT,
                          fmt::format("$CLICKHOUSE_SERVER={} is not an executable file", env));
    }
    for (const char* candidate : {"/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"}) {
        if (is_executable(candidate)) return std::string(candidate);
    }
    return make_error(ENOENT,
                      "clickhouse-server is not installed (looked in /usr/sbin and /usr/bin; "
                      "apt install clickhouse-server, or set $CLICKHOUSE_SERVER)");
}

Result<std::vector<uint16_t>> free_ports(size_t count) {
    // All sockets stay bound until every port is known, so the ports are distinct.
    std::vector<int> fds;
    std::vector<uint16_t> ports;
    Error failure;
    bool failed = false;
    for (size_t i = 0; i < count && !failed; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            failure = errno_error(errno, "socket");
            failed = true;
            break;
        }
        fds.push_back(fd);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            failure = errno_error(errno, "binding a free port on 127.0.0.1");
            failed = true;
            break;
        }
        ports.push_back(ntohs(addr.sin_port));
    }
    for (int fd : fds) ::close(fd);
    if (failed) return failure;
    return ports;
}

Result<LocalServer> LocalServer::start(ServerOptions options) {
    bool auto_ports =
        options.ports.http == 0 && options.ports.tcp == 0 && options.ports.interserver == 0;
    constexpr int kAttempts = 3;
    for (int attempt = 1;; ++attempt) {
        bool port_conflict = false;
        auto server = start_once(options, &port_conflict);
        if (server || !port_conflict || !auto_ports || attempt == kAttempts) return server;
    }
}

Result<LocalServer> LocalServer::start_once(const ServerOptions& options, bool* port_conflict) {
    *port_conflict = false;
    std::string binary = options.binary;
    if (binary.empty()) {
        auto found = find_server_binary();
        if (!found) return found.error();
        binary = *found;
    } else if (!is_executable(binary)) {
        return make_error(
            ENOENT, fmt::format("ClickHouse server binary {} is not an executable file", binary));
    }

    LocalServer server;
    server.stop_timeout_ = options.stop_timeout;
    if (options.dir.empty()) {
        auto dir = make_temp_dir("liveio-clickhouse-");
        if (!dir) return dir.error();
        server.dir_ = *dir;
        server.remove_dir_ = !options.keep_dir;
    } else {
        std::error_code ec;
        bool existed = fs::exists(options.dir, ec);
        fs::create_directories(options.dir, ec);
        if (ec)
            return make_error(EIO, fmt::format("cannot create {}: {}", options.dir, ec.message()));
        server.dir_ = fs::absolute(options.dir).string();
        server.remove_dir_ = !existed && !options.keep_dir;
    }
    for (const char* sub : {"data", "tmp", "log", "user_files", "format_schemas"}) {
        std::error_code ec;
        fs::create_directories(server.dir_ + "/" + sub, ec);
        if (ec)
            return make_error(
                EIO, fmt::format("cannot create {}/{}: {}", server.dir_, sub, ec.message()));
    }

    server.ports_ = options.ports;
    {
        auto picked = free_ports(3);
        if (!picked) return picked.error();
        if (!server.ports_.http) server.ports_.http = (*picked)[0];
        if (!server.ports_.tcp) server.ports_.tcp = (*picked)[1];
        if (!server.ports_.interserver) server.ports_.interserver = (*picked)[2];
    }
    std::string config_path = server.dir_ + "/config.xml";
    if (auto r = write_file(config_path, config_xml(server.dir_, server.ports_, options)); !r)
        return r.error();
    if (auto r = write_file(server.dir_ + "/users.xml", users_xml(options)); !r) return r.error();
    // A previous run in the same directory must not make this start look like a port conflict.
    ::unlink(server.error_log_path().c_str());
    std::optional<UserIds> run_as;
    if (!options.user.empty()) {
        auto ids = lookup_user(options.user);
        if (!ids) return ids.error();
        run_as = *ids;
        // stdout.log is created by the child, as that user, in the directory handed over here.
        if (auto r = chown_tree(server.dir_, ids->uid, ids->gid); !r) return r.error();
    }

    // Everything the child needs is prepared before fork: between fork and exec only
    // async-signal-safe calls are allowed in a multi-threaded parent.
    std::string stdout_path = server.dir_ + "/log/stdout.log";
    std::string config_arg = "--config-file=" + config_path;
    std::string argv0 = "clickhouse-server";
    char* argv[] = {argv0.data(), config_arg.data(), nullptr};
    // environ with options.environment applied, built here: setenv is not allowed after fork.
    std::vector<std::string> env_strings = options.environment;
    for (char** e = environ; options.inherit_environment && *e; ++e) {
        const std::string_view var(*e);
        const std::string_view name = var.substr(0, var.find('='));
        const bool replaced = std::any_of(
            options.environment.begin(), options.environment.end(), [&](const std::string& v) {
                return std::string_view(v).substr(0, v.find('=')) == name;
            });
        if (!replaced) env_strings.emplace_back(var);
    }
    std::vector<char*> envp;
    for (auto& v : env_strings) envp.push_back(v.data());
    envp.push_back(nullptr);
    pid_t parent = ::getpid();
    bool die_with_parent = options.die_with_parent;
    int nice = options.nice;

    auto started = Clock::now();
    pid_t pid = ::fork();
    if (pid < 0) return errno_error(errno, "fork");
    if (pid == 0) {
        // Credentials first: changing them clears the parent-death signal.
        if (run_as && (::setgroups(1, &run_as->gid) != 0 || ::setgid(run_as->gid) != 0 ||
                       ::setuid(run_as->uid) != 0))
            ::_exit(126);
        if (die_with_parent) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
        }
        // Own process group: a Ctrl-C meant for the test runner reaches the server only
        // through stop().
        ::setpgid(0, 0);
        if (nice != 0) ::setpriority(PRIO_PROCESS, 0, nice);
        // The mask survives exec: a parent that blocks SIGINT/SIGTERM to wait for them in a
        // thread (liveio demo) would otherwise leave stop()'s SIGTERM pending forever.
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        int out = ::open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (out < 0 || in < 0 || ::chdir(server.dir_.c_str()) != 0) ::_exit(127);
        ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(out, 2);
        ::execve(binary.c_str(), argv, envp.data());
        ::_exit(127);
    }
    server.pid_ = pid;

    // From here on, a failure must not leave the server running: `server` going out of
    // scope stops it (and removes the directory if we created it).
    auto deadline = started + options.start_timeout;
    HttpClient probe(HttpClientOptions{.host = "127.0.0.1",
                                       .port = server.ports_.http,
                                       .timeout = std::chrono::milliseconds(2000)});
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            server.pid_ = -1;
            std::string tail = server.log_tail();
            *port_conflict = tail.find("Address already in use") != std::string::npos;
            return make_error(ECHILD,
                              fmt::format("{} {} during startup (dir {}); log tail:\n{}", binary,
                                          describe_status(status), server.dir_, tail));
        }
        if (probe.ping()) break;
        probe.disconnect();
        if (Clock::now() >= deadline) {
            std::string tail = server.log_tail();
            return make_error(
                ETIMEDOUT,
                fmt::format(
                    "{} did not answer /ping on port {} within {} ms (dir {}); log tail:\n{}",
                    binary, server.ports_.http, options.start_timeout.count(), server.dir_, tail));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    server.startup_time_ =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    return server;
}

LocalServer::LocalServer(LocalServer&& other) noexcept
    : dir_(std::move(other.dir_)),
      remove_dir_(std::exchange(other.remove_dir_, false)),
      ports_(other.ports_),
      pid_(std::exchange(other.pid_, -1)),
      stop_timeout_(other.stop_timeout_),
      startup_time_(other.startup_time_) {
    other.dir_.clear();
}

LocalServer& LocalServer::operator=(LocalServer&& other) noexcept {
    if (this != &other) {
        release();
        dir_ = std::move(other.dir_);
        remove_dir_ = std::exchange(other.remove_dir_, false);
        ports_ = other.ports_;
        pid_ = std::exchange(other.pid_, -1);
        stop_timeout_ = other.stop_timeout_;
        startup_time_ = other.startup_time_;
    }
    return *this;
}

LocalServer::~LocalServer() { release(); }

void LocalServer::release() {
    // A destructor cannot report; stop() called explicitly can.
    (void)stop();
}

Result<void> LocalServer::stop() {
    Result<void> result;
    if (pid_ > 0) {
        pid_t pid = std::exchange(pid_, -1);
        int status = 0;
        if (::kill(pid, SIGTERM) != 0 && errno != ESRCH) {
            result = errno_error(errno, fmt::format("kill({}, SIGTERM)", pid));
        }
        if (!wait_exit(pid, Clock::now() + stop_timeout_, &status)) {
            ::kill(pid, SIGKILL);
            wait_exit(pid, Clock::now() + std::chrono::seconds(10), &status);
            result = make_error(ETIMEDOUT, fmt::format("clickhouse-server {} did not exit within "
                                                       "{} ms of SIGTERM; killed. log tail:\n{}",
                                                       pid, stop_timeout_.count(), log_tail()));
        } else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) &&
                   !(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) && result.ok()) {
            result =
                make_error(ECHILD, fmt::format("clickhouse-server {} {} on SIGTERM; log tail:\n{}",
                                               pid, describe_status(status), log_tail()));
        }
    }
    if (remove_dir_ && !dir_.empty()) {
        std::error_code ec;
        fs::remove_all(dir_, ec);
        remove_dir_ = false;
    }
    return result;
}

pid_t LocalServer::release_process() {
    remove_dir_ = false;
    return std::exchange(pid_, -1);
}

HttpClient LocalServer::client(std::chrono::milliseconds timeout) const {
    return HttpClient(
        HttpClientOptions{.host = "127.0.0.1", .port = ports_.http, .timeout = timeout});
}

std::string LocalServer::log_tail(size_t lines) const {
    std::string out;
    for (const std::string& path : {error_log_path(), dir_ + "/log/stdout.log"}) {
        std::string t = tail_of(path, lines);
        if (!t.empty()) out += fmt::format("--- {}\n{}", path, t);
    }
    if (out.empty()) out = "(the server wrote no log)\n";
    return out;
}

std::string remote_servers_xml(const std::string& name, const std::vector<uint16_t>& tcp_ports) {
    std::string shards;
    for (uint16_t port : tcp_ports)
        shards += fmt::format(
            "            <shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>\n",
            port);
    return fmt::format(
        "    <remote_servers>\n        <{0}>\n{1}        </{0}>\n    </remote_servers>\n", name,
        shards);
}

Result<LocalCluster> LocalCluster::start(ClusterOptions options) {
    if (options.shards == 0) return make_error(EINVAL, "a cluster needs at least one shard");
    if (options.shards > 16)
        return make_error(EINVAL, fmt::format("{} shards: at most 16", options.shards));
    if (!options.server.dir.empty() || options.server.ports.http || options.server.ports.tcp ||
        options.server.ports.interserver)
        return make_error(
            EINVAL, "cluster shards choose their own directories and ports; leave them empty");
    if (options.name.empty() || options.name.find_first_of("<>&\"' /") != std::string::npos)
        return make_error(EINVAL, fmt::format("bad cluster name '{}'", options.name));

    constexpr int kAttempts = 3;
    Error last;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
        LocalCluster cluster;
        cluster.name_ = options.name;
        auto root = make_temp_dir("liveio-clickhouse-cluster-");
        if (!root) return root.error();
        cluster.root_ = *root;
        cluster.remove_root_ = !options.server.keep_dir;

        // Every shard's config names all shards, so all ports are chosen before any starts.
        auto ports = free_ports(3 * options.shards);
        if (!ports) return ports.error();
        std::vector<uint16_t> tcp_ports;
        for (size_t i = 0; i < options.shards; ++i) tcp_ports.push_back((*ports)[3 * i + 1]);
        std::string remote = remote_servers_xml(options.name, tcp_ports);

        bool conflict = false;
        for (size_t i = 0; i < options.shards; ++i) {
            ServerOptions so = options.server;
            so.dir = fmt::format("{}/shard{}", cluster.root_, i);
            so.ports = ServerPorts{(*ports)[3 * i], (*ports)[3 * i + 1], (*ports)[3 * i + 2]};
            so.extra_config += remote;
            bool port_conflict = false;
            auto server = LocalServer::start_once(so, &port_conflict);
            if (!server) {
                conflict = port_conflict;
                last = make_error(server.error().code,
                                  fmt::format("shard {}: {}", i, server.error().message));
                break;
            }
            cluster.shards_.push_back(std::move(*server));
        }
        if (cluster.shards_.size() == options.shards) return cluster;
        if (!conflict) return last;
    }
    return last;
}

LocalCluster::LocalCluster(LocalCluster&& other) noexcept
    : name_(std::move(other.name_)),
      root_(std::exchange(other.root_, {})),
      remove_root_(std::exchange(other.remove_root_, false)),
      shards_(std::exchange(other.shards_, {})) {}

LocalCluster& LocalCluster::operator=(LocalCluster&& other) noexcept {
    if (this != &other) {
        (void)stop();
        name_ = std::move(other.name_);
        root_ = std::exchange(other.root_, {});
        remove_root_ = std::exchange(other.remove_root_, false);
        shards_ = std::exchange(other.shards_, {});
    }
    return *this;
}

LocalCluster::~LocalCluster() { (void)stop(); }

Result<void> LocalCluster::stop() {
    Result<void> result;
    for (size_t i = 0; i < shards_.size(); ++i) {
        auto r = shards_[i].stop();
        if (!r && result.ok())
            result = make_error(r.error().code, fmt::format("shard {}: {}", i, r.error().message));
    }
    shards_.clear();
    if (remove_root_ && !root_.empty()) {
        std::error_code ec;
        fs::remove_all(root_, ec);
        remove_root_ = false;
    }
    return result;
}

Result<void> LocalCluster::execute_on_all(std::string_view sql) {
    for (size_t i = 0; i < shards_.size(); ++i) {
        auto client = shards_[i].client();
        if (auto r = client.execute(sql); !r)
            return make_error(r.error().code, fmt::format("shard {}: {}", i, r.error().message));
    }
    return {};
}

}  // namespace liveio::clickhouse
