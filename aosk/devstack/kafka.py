"""A real Apache Kafka 3.9 broker, single-node KRaft, run from jars fetched via Maven.

The jars come from Maven Central once (``mvn dependency:copy-dependencies`` on
``ops/kafka/pom.xml``) into a cache outside the repository; the storage is formatted
on first start; the broker runs as ``java -cp 'lib/*' kafka.Kafka server.properties``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from aosk.devstack._process import pid_alive, port_in_use, read_pid, terminate
from aosk.errors import DevStackError
from aosk.waiting import wait_for

KAFKA_VERSION = "3.9.1"
OPS_DIR = Path(__file__).resolve().parents[2] / "ops" / "kafka"

SERVER_PROPERTIES = """\
# Written by `aosk dev up`; single-node combined broker+controller (KRaft).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
# Topics are created explicitly (aosk topics ensure); a typo in a
# topic name should fail loudly instead of creating a stray topic.
auto.create.topics.enable=false
message.max.bytes=2097152
replica.fetch.max.bytes=2097152
log.retention.hours=-1
log.segment.bytes=268435456
num.network.threads=2
num.io.threads=4
"""

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log_dir}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.state.change.logger=WARN
"""


@dataclass(frozen=True)
class KafkaBroker:
    """The embedded broker's files and ports. Every method is safe to call repeatedly."""

    home: Path
    """State directory of this broker (config, data, logs, pid)."""
    lib_dir: Path
    """Cached jars."""
    port: int
    controller_port: int
    heap: str = "512m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid_alive(pid) else None

    # -- installation -------------------------------------------------------------

    def ensure_jars(self) -> None:
        fetch_jars(self.lib_dir)

    def _java(self, *args: str, log: Path | None = None) -> list[str]:
        java = require_java()
        return [
            java, f"-Xmx{self.heap}", f"-Xms{min_heap(self.heap)}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-Dkafka.logs.dir=" + str(self.log_dir),
            "-cp", str(self.lib_dir / "*"), *args,
        ]

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(
            SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, data_dir=self.data_dir
            )
        )
        (self.home / "log4j.properties").write_text(LOG4J_PROPERTIES.format(log_dir=self.log_dir))

    def ensure_formatted(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = _kafka_uuid()
        cmd = self._java(
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
            f"--config={self.home / 'server.properties'}", "--ignore-formatted",
        )
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DevStackError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")

    # -- lifecycle ----------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        """Start the broker (if not running) and wait until it answers metadata requests."""
        if self.pid() is None:
            for port in (self.port, self.controller_port):
                if port_in_use(port):
                    raise DevStackError(
                        f"port 127.0.0.1:{port} recorded for the embedded Kafka is taken by "
                        f"another process; stop it or remove {self.home.parent / 'stack.json'}"
                    )
            self.ensure_jars()
            self.write_config()
            self.ensure_formatted()
            out = open(self.log_dir / "broker.out", "ab")
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.home / "server.properties")),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it
            )
            out.close()
            self.pid_file.write_text(f"{proc.pid}\n")
        try:
            wait_for(self.answers_metadata, timeout=timeout, interval=0.5, what="Kafka to answer metadata requests")
        except TimeoutError as e:
            raise DevStackError(f"{e}; see {self.log_dir / 'server.log'} and broker.out") from e

    def answers_metadata(self) -> bool:
        if self.pid() is None:
            raise DevStackError(f"the Kafka broker exited; see {self.log_dir / 'broker.out'} and server.log")
        if not port_in_use(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        from aosk._kafka import quiet

        admin = AdminClient(quiet({"bootstrap.servers": self.bootstrap}))
        try:
            md = admin.list_topics(timeout=3)
        except Exception:
            return False
        return bool(md.brokers)

    def stop(self, *, timeout: float = 60.0) -> None:
        """Controlled shutdown; SIGKILL only if it does not exit within ``timeout``."""
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, "not running"
        if not port_in_use(self.port):
            return False, f"process {pid} runs but 127.0.0.1:{self.port} does not accept connections (starting?)"
        return True, f"running (pid {pid}) at {self.bootstrap}"


def fetch_jars(lib_dir: Path) -> Path:
    """Fetch the broker and tools jars from Maven Central into ``lib_dir``, once."""
    if (lib_dir / ".complete").exists():
        return lib_dir
    require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevStackError(
            "Apache Maven (mvn) is not installed; it fetches the Kafka broker from "
            "Maven Central. Install it (Debian: apt-get install maven) and retry."
        )
    pom = OPS_DIR / "pom.xml"
    if not pom.exists():
        raise DevStackError(f"{pom} is missing; run aosk dev from a checkout of the repository")
    lib_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={lib_dir}", "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        missing = re.findall(r"(?:Could not (?:find|resolve|transfer) artifact|Failure to find) ([^\s]+)", output)
        what = f"artifact {missing[0]}" if missing else "the Kafka artifacts named in ops/kafka/pom.xml"
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise DevStackError(f"could not download {what} from Maven Central:\n{tail}")
    if not any(lib_dir.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise DevStackError(f"Maven ran but kafka_2.13-{KAFKA_VERSION}.jar is not in {lib_dir}")
    (lib_dir / ".complete").write_text(KAFKA_VERSION + "\n")
    return lib_dir


def kafka_lib_dir(cache_dir: Path) -> Path:
    """Where the jars of this Kafka version are cached."""
    return cache_dir.expanduser() / f"kafka-{KAFKA_VERSION}" / "lib"


def require_java() -> str:
    """Path of a Java 17+ runtime, or a DevStackError saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise DevStackError(
            "Java is not installed; the embedded Kafka broker needs Java 17 or newer "
            "(Debian: apt-get install openjdk-17-jre-headless)."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):
        major = int(m.group(2))
    if major < 17:
        raise DevStackError(f"Java 17 or newer is needed for Kafka 3.9, found {major or 'unknown'} at {java}")
    return java


def min_heap(heap: str) -> str:
    """Half of -Xmx for -Xms, in the same unit (bounded, so the broker does not grow unchecked)."""
    num, unit = int(heap[:-1]), heap[-1]
    return f"{max(num // 2, 1)}{unit}"


def _kafka_uuid() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
