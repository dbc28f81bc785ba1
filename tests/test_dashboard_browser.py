"""The dashboard end to end in headless Chromium.

Debian's ``chromium`` (installed with apt-get by the test itself, as root, when missing; ``.ci/run``
also installs it first), driven by Playwright for Python, never ``playwright install``. The dashboard runs under uvicorn
in a thread (its own event loop) on a free localhost port, against an SQLite file that a real
worker (another thread, another loop) and a producer (the sync facade) share.

If chromium or Playwright is missing or cannot start, these tests fail and say so: they never skip.
Screenshots of every page go to the test's ``tmp_path`` and to ``test-output/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn

from litetask_async import LiteTask, TaskStatus
from tests import jobs
from tests.conftest import running_worker
from tests.system_packages import ensure_command

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-output"
TOKEN = "browser-test-token"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
XSS = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(2)>"


class WorkerThread(threading.Thread):
    """A real worker on its own event loop, in a thread of the test process."""

    def __init__(self, url: str) -> None:
        super().__init__(name="dashboard-test-worker", daemon=True)
        self.app = LiteTask(url)
        jobs.register(self.app)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def run(self) -> None:
        async def main() -> None:
            self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
            async with running_worker(self.app, concurrency=4, processes=1, grace_period=1.0):
                self.ready.set()
                await self._stop_event.wait()
            await self.app.aclose()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(60)
        assert not self.is_alive(), "the worker thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the worker thread failed: {self.error!r}") from self.error


@dataclass
class Stack:
    base: str
    producer: LiteTask
    tasks: dict[str, Any]
    workdir: Path
    server: uvicorn.Server
    threads: list[threading.Thread] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def wait_status(self, task_id: str, status: TaskStatus, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.producer.get_task_sync(task_id)
            if rec is not None and rec.status is status:
                return
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} did not become {status} within {timeout}s: {rec}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("dashboard-browser")
    url = f"sqlite:///{workdir / 'tasks.db'}"
    worker = WorkerThread(url)
    worker.start()
    assert worker.ready.wait(30), "the worker did not start"
    if worker.error is not None:
        raise worker.error

    dash_app = LiteTask(url)  # the dashboard's own app object, like a separate web process
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(dash_app.dashboard(token=TOKEN), log_level="warning", lifespan="on",
                            loop="asyncio", http="h11", ws="none")
    server = uvicorn.Server(config)
    server_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                     name="dashboard-test-uvicorn")
    server_thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert server_thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)

    producer = LiteTask(url)
    st = Stack(base=f"http://127.0.0.1:{port}", producer=producer, tasks=jobs.register(producer),
               workdir=workdir, server=server)
    try:
        yield st
    finally:
        server.should_exit = True
        server_thread.join(30)
        sock.close()
        producer.close()
        worker.stop()
        assert not server_thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser | str]:
    """The browser, or why there is none (each test then fails with that message)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        yield f"Playwright for Python is not installed ({exc}): pip install -e '.[test]'"
        return
    executable = ensure_command("chromium")
    if executable is None:
        yield ("Debian's chromium is not installed (`command -v chromium` finds nothing) and could "
               "not be installed here: run `apt-get update && apt-get install -y chromium`")
        return
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        except Exception as exc:
            yield f"could not launch {executable} with Playwright: {exc}"
            return
        try:
            yield b
        finally:
            b.close()


@contextmanager
def open_page(browser: Browser | str) -> Iterator[Page]:
    """A fresh page; fails the test (not an error, not a skip) when there is no browser. On exit,
    fails on any script error or Content-Security-Policy violation seen by the page."""
    if isinstance(browser, str):
        pytest.fail(browser, pytrace=False)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    p = context.new_page()
    p.set_default_timeout(15_000)
    problems: list[str] = []
    p.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    p.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
         if msg.type == "error" and "status of 403" not in msg.text else None)
    try:
        yield p
    finally:
        context.close()
    assert problems == [], problems


def progress_value(page: Page) -> int:
    value = page.locator("#progress-bar").evaluate("el => el.value")
    assert isinstance(value, int | float)
    return int(value)


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shutil.copyfile(path, SCREENSHOTS / path.name)
    return path


def test_progress_bar_moves_while_the_task_runs(stack: Stack, browser: Browser | str, tmp_path: Path) -> None:
    with open_page(browser) as page:
        from playwright.sync_api import expect

        tid = stack.tasks["progress_steps"].delay(12, 0.25)  # 3 s, 12 steps
        page.goto(stack.url(f"/tasks/{tid}"))
        expect(page.locator("#status-badge")).to_have_text("running", timeout=10_000)
        expect(page.locator("#status-message")).to_contain_text("step")
        first = progress_value(page)
        page.wait_for_timeout(1000)
        second = progress_value(page)
        assert 0 <= first < second <= 100, (first, second)
        expect(page.locator("#progress-text")).to_have_text(re.compile(r"\d+%"))
        expect(page.locator("#started-at")).to_contain_text("UTC")  # details follow the live state too
        screenshot(page, tmp_path, "detail")
        # when it ends the page reloads once and shows the result
        expect(page.locator("#status-badge")).to_have_text("completed", timeout=15_000)
        expect(page.locator("#result")).to_have_text("12")
        assert progress_value(page) == 100
        expect(page.locator("#status-message")).to_have_text("step 12 of 12")


def test_retry_a_failed_task_from_the_page(stack: Stack, browser: Browser | str, tmp_path: Path) -> None:
    with open_page(browser) as page:
        from playwright.sync_api import expect

        tid = stack.tasks["fail_once"].delay(str(stack.workdir / "retry-marker"))
        stack.wait_status(tid, TaskStatus.FAILED)
        page.goto(stack.url(f"/tasks/{tid}"))
        expect(page.locator("#error")).to_contain_text("RuntimeError")
        expect(page.locator("#error")).to_contain_text("first run: created")
        screenshot(page, tmp_path, "detail-failed")
        page.fill("input[name=token]", TOKEN)
        page.click("#retry-button")
        expect(page.locator("#status-badge")).to_have_text("completed", timeout=20_000)
        expect(page.locator("#result")).to_contain_text("second time lucky")
        expect(page.locator("#errors")).to_contain_text("first run: created")  # attempt 1 stays in the history
        expect(page.locator("#attempts")).to_have_text("2 of 2")
        rec = stack.producer.get_task_sync(tid)
        assert rec is not None and rec.status is TaskStatus.COMPLETED and rec.attempts == 2


def test_xss_argument_is_inert(stack: Stack, browser: Browser | str) -> None:
    with open_page(browser) as page:
        from playwright.sync_api import expect

        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        tid = stack.tasks["fail_async"].delay(XSS + XSS_IMG)
        stack.wait_status(tid, TaskStatus.FAILED)
        page.goto(stack.url(f"/tasks/{tid}"))
        expect(page.locator("#args")).to_contain_text(XSS + XSS_IMG)
        expect(page.locator("#error")).to_contain_text(XSS)
        page.goto(stack.url("/tasks?name=tests.jobs.fail_async"))
        expect(page.locator("#task-table")).to_contain_text(XSS)
        page.goto(stack.url("/"))
        page.wait_for_timeout(500)
        assert dialogs == [], dialogs
        page.goto(stack.url(f"/tasks/{tid}"))
        page.wait_for_timeout(500)
        assert dialogs == [], dialogs
        assert page.locator("img").count() == 0 and page.locator("#args script").count() == 0


def test_post_without_the_token_is_refused(stack: Stack, browser: Browser | str) -> None:
    with open_page(browser) as page:
        from playwright.sync_api import expect

        tid = stack.tasks["aadd"].configure(countdown=3600).delay(1, 1)  # pending, not due
        page.goto(stack.url(f"/tasks/{tid}"))
        cancel = stack.url(f"/tasks/{tid}/cancel")
        status = page.evaluate("async (u) => (await fetch(u, {method: 'POST'})).status", cancel)
        assert status == 403
        status = page.evaluate("""async (u) => (await fetch(u, {method: 'POST', body: 'token=nope',
            headers: {'Content-Type': 'application/x-www-form-urlencoded'}})).status""", cancel)
        assert status == 403
        # through the form, with a wrong token
        page.fill("input[name=token]", "not-the-token")
        with page.expect_response(lambda r: r.url.endswith("/cancel")) as response:
            page.click("#cancel-button")
        assert response.value.status == 403
        expect(page.locator("h1")).to_have_text("Forbidden")
        rec = stack.producer.get_task_sync(tid)
        assert rec is not None and rec.status is TaskStatus.PENDING
        # and with the right one
        page.goto(stack.url(f"/tasks/{tid}"))
        page.fill("input[name=token]", TOKEN)
        page.click("#cancel-button")
        expect(page.locator("#status-badge")).to_have_text("cancelled")
        expect(page.locator(".notice")).to_contain_text("Cancellation requested")


def test_screenshots_of_every_page(stack: Stack, browser: Browser | str, tmp_path: Path) -> None:
    with open_page(browser) as page:
        from playwright.sync_api import expect

        t = stack.tasks
        done = [t["aadd"].configure(queue="reports").delay(i, i) for i in range(6)]
        done += [t["logs_async"].delay(3), t["fail_async"].delay("disk full")]
        for tid in done:
            stack.producer.wait_sync(tid, 20)
        t["aadd"].configure(queue="emails", countdown=600).delay(0, 0)
        running = t["progress_steps"].delay(20, 0.3)
        stack.wait_status(running, TaskStatus.RUNNING)

        page.goto(stack.url("/"))
        expect(page.locator("#throughput rect.bar-completed").first).to_be_visible()
        expect(page.locator("#stat-workers")).to_have_text("1")
        shots = [screenshot(page, tmp_path, "overview")]
        page.goto(stack.url("/tasks"))
        expect(page.locator("#task-table")).to_be_visible()
        shots.append(screenshot(page, tmp_path, "list"))
        page.goto(stack.url(f"/tasks/{done[6]}"))  # logs and a status line
        expect(page.locator("#logs")).to_contain_text("async step 2")
        shots.append(screenshot(page, tmp_path, "detail-logs"))
        page.goto(stack.url(f"/tasks/{running}"))
        expect(page.locator("#progress-text")).not_to_have_text("0%")  # (wait_for_function would need eval: CSP)
        shots.append(screenshot(page, tmp_path, "detail-running"))
        page.goto(stack.url("/workers"))
        expect(page.locator("#worker-table")).to_contain_text("all")
        shots.append(screenshot(page, tmp_path, "workers"))
        for shot in shots:
            assert shot.stat().st_size > 10_000 and (SCREENSHOTS / shot.name).exists()
