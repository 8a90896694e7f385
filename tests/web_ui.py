"""The real ClearML web UI for the tests: ClearML's own web app (../shared/tools/clearml-web,
or the folder CLEARML_WEB_TOOLS names) served by nginx on 127.0.0.1 against the local
server, driven by Playwright in Debian's Chromium (no browser download), the way a user
clicks through it. Every request that is not to 127.0.0.1 is aborted."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.clearml_stack import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / os.environ.get("CLEARML_WEB_TOOLS", "../shared/tools/clearml-web")
CHROMIUM = Path("/usr/lib/chromium/chromium")
# Where the docs' screenshots go when `make docs-screenshots` runs these tests.
SCREENSHOTS = os.environ.get("SLM_QA_EVAL_SCREENSHOTS")


def why_not_available() -> str | None:
    if not (TOOLS / "start.sh").is_file():
        return f"{TOOLS} is absent: the browser tests need ClearML's web app and its scripts"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (make install-dev installs Debian's chromium as root)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (make install-dev installs it)"
    return None


class WebUI:
    """nginx serving the web app for one Stack; stopped by its PID file."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        api_port = stack.api_host.rsplit(":", 1)[1]
        files_port = stack.files_host.rsplit(":", 1)[1]
        self.env = {
            **os.environ,
            "CLEARML_LOCAL_DIR": str(stack.home),
            "CLEARML_LOCAL_WEB_PORT": str(self.port),
            "CLEARML_LOCAL_API_PORT": api_port,
            "CLEARML_LOCAL_FILES_PORT": files_port,
        }

    def start(self) -> WebUI:
        subprocess.run(["bash", str(TOOLS / "stop.sh")], env=self.env, capture_output=True)
        proc = subprocess.run(
            ["bash", str(TOOLS / "start.sh")], env=self.env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"clearml-web did not start:\n{proc.stdout}{proc.stderr}")
        return self

    def stop(self) -> None:
        subprocess.run(["bash", str(TOOLS / "stop.sh")], env=self.env, capture_output=True)


def local_only(url: str, allowed: str) -> bool:
    return url.startswith(allowed) or url.startswith(("data:", "blob:", "about:"))


class Browser:
    """One headless Chromium, one logged-in page; what a user sees, step by step."""

    def __init__(self, ui: WebUI) -> None:
        from playwright.sync_api import sync_playwright

        self.ui = ui
        self.blocked: list[str] = []  # requests for anything but the UI's 127.0.0.1 address
        self.finished_elsewhere: list[str] = []  # of those, any that completed: none may
        self.requests = 0
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        self.context = self._browser.new_context(viewport={"width": 1600, "height": 1000})
        self.context.route("**/*", self._route)
        self.context.on("requestfinished", self._finished)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)

    def _route(self, route) -> None:
        if local_only(route.request.url, self.ui.url):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _finished(self, request) -> None:
        self.requests += 1
        if not local_only(request.url, self.ui.url):
            self.finished_elsewhere.append(request.url)

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()

    # ---- moving around -------------------------------------------------------------------

    def login(self) -> None:
        self.page.goto(f"{self.ui.url}/login")
        self.page.fill("input[name=name]", "Test User")
        self.page.get_by_role("button", name=re.compile("start", re.I)).click()
        self.page.wait_for_url(re.compile(r"/(dashboard|projects|pipelines)"))
        self.dismiss()

    def dismiss(self) -> None:
        """The pop-ups a fresh server shows: usage statistics, welcome, no workers."""
        page = self.page
        page.wait_for_timeout(500)
        for selector in ("button#Deny", "mat-dialog-container [data-id='Cross']"):
            button = page.locator(selector)
            if button.count() and button.first.is_visible():
                button.first.click()
                page.wait_for_timeout(300)

    def open(self, path: str) -> None:
        self.page.goto(f"{self.ui.url}{path}")
        self.page.wait_for_load_state("networkidle")
        self.dismiss()

    def shot(self, name: str) -> None:
        """A screenshot for docs/clearml.md, when `make docs-screenshots` asks for them."""
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))

    def api_call(self, action: str):
        """Waits for the web app's own call to the server's ``action``."""
        return self.page.expect_response(lambda r: r.url.split("?")[0].endswith(f"/{action}"))

    # ---- what a user does to a task ------------------------------------------------------

    def task_menu(self, item: str) -> None:
        self.page.locator("sm-experiment-info-header button[data-id='menuIcon']").first.click()
        menu = self.page.locator(".cdk-overlay-container [role='menuitem']")
        menu.filter(has_text=re.compile(rf"^\s*{item}", re.I)).first.click()

    def clone(self, project_id: str, task_id: str, name: str) -> str:
        """Clone from the task's menu; returns the new task's id once its page is open."""
        from playwright.sync_api import expect

        self.open(f"/projects/{project_id}/tasks/{task_id}/execution")
        self.task_menu("Clone")
        dialog = self.page.locator("mat-dialog-container")
        box = dialog.locator("input[name='ExperimentName']")
        # The dialog writes "Clone Of ", then (a tick later) the task's name after it.
        expect(box).to_have_value(re.compile(r"^Clone Of \S"))
        box.fill(name)
        expect(box).to_have_value(name)
        with self.api_call("tasks.clone"):
            dialog.locator("[data-id='CloneButton']").click()
        self.page.wait_for_url(re.compile(rf"/tasks/(?!{task_id})[0-9a-f]{{32}}/"))
        return re.search(r"/tasks/([0-9a-f]{32})/", self.page.url)[1]

    def edit_arg(self, project_id: str, task_id: str, name: str, value: str) -> None:
        self.open(f"/projects/{project_id}/tasks/{task_id}/hyper-params/hyper-param/Args")
        self.page.locator("sm-editable-section").first.hover()  # EDIT shows on hover
        self.page.locator("button#editSection").first.click()
        names = self.page.locator("sm-editable-section input[placeholder='Parameter']")
        values = self.page.locator("sm-editable-section input[placeholder='Value']")
        names.first.wait_for()
        index = [names.nth(i).input_value() for i in range(names.count())].index(name)
        values.nth(index).fill(value)
        self.shot("clone-edit-args")
        with self.api_call("tasks.edit_hyper_params"):
            self.page.locator("sm-loading-button[data-id='SaveButton'] button").click()

    def edit_configuration(self, project_id: str, task_id: str, name: str, edit) -> None:
        """The configuration object's text through the UI's editor (ACE): ``edit`` maps the
        text as shown to the text saved."""
        self.open(f"/projects/{project_id}/tasks/{task_id}/hyper-params/configuration/{name}")
        self.page.locator("sm-scroll-textarea .diff-container").first.hover()
        self.page.locator("sm-scroll-textarea .floating-buttons button", has_text="EDIT").click()
        editor = "document.querySelector('sm-edit-json .ace_editor')"
        text = self.page.evaluate(f"() => ace.edit({editor}).getValue()")
        self.page.evaluate(f"t => ace.edit({editor}).setValue(t, -1)", edit(text))
        with self.api_call("tasks.edit_configuration"):
            self.page.locator("[data-id='okButton']").click()

    def enqueue(self, project_id: str, task_id: str, queue: str) -> None:
        self.open(f"/projects/{project_id}/tasks/{task_id}/execution")
        self.task_menu("Enqueue")
        dialog = self.page.locator("mat-dialog-container")
        field = dialog.locator("[data-id='Select Queue']")
        # The dialog writes its default queue into the field once it has loaded the queues,
        # which can land in front of text filled in before ("defaultservices"), and the
        # list then offers to create that queue: fill until the field holds the name alone,
        # then pick the option that is exactly it.
        exact = re.compile(rf"^\s*{re.escape(queue)}\s*$")
        option = self.page.locator(".cdk-overlay-container mat-option", has_text=exact).first
        for _ in range(20):
            field.fill(queue)
            self.page.wait_for_timeout(250)
            if field.input_value() == queue and option.is_visible():
                break
        else:
            raise AssertionError(f"the Enqueue dialog's queue field holds {field.input_value()!r}")
        option.click()
        assert field.input_value() == queue, field.input_value()
        with self.api_call("tasks.enqueue_many"):
            dialog.locator("[data-id='EnqueueButton']").click()
        self.dismiss()
