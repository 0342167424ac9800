#!/usr/bin/env python3
"""The console in a real browser: Debian's headless Chromium driven through chromedriver.

Starts `akwatch console` on the bundled scenario (its own store and tokens file), then, as a
security engineer would: signs in, opens every page, finds the leaked key from the overview,
handles one alarm and allowlists another through the forms (and checks that the next replay
suppresses it), triages in bulk, writes an IP note holding <script>, edits a policy, and checks
that a viewer sees no write action, that the CSP and cookie flags are set, that forms without
the CSRF token are refused and that no page logs a console error. Then it fills a store with
10,000 keys and measures the time to first paint of the overview and of the key list.

The browser runs in the Asia/Shanghai time zone (TZ for Chromium), so that times shown in the
viewer's zone differ from UTC; the narrow-window checks emulate a 400 px wide device (Chromium
clamps a real window to 500 px).

Screenshots of every page go to target/console-screenshots/ (and the figures to
timings.json there). Run by scripts/browser-test.sh; exits non-zero on any failed check.

Environment: AKWATCH_BIN (default target/release/akwatch), CHROMIUM (/usr/bin/chromium),
CHROMEDRIVER (/usr/bin/chromedriver).
"""

import hashlib
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("AKWATCH_BIN", os.path.join(ROOT, "target", "release", "akwatch"))
SHOTS = os.path.join(ROOT, "target", "console-screenshots")

failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    if ok:
        print(f"  ok   {what}")
    else:
        print(f"  FAIL {what}")
        failures.append(what)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"akwatch exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {seconds} s")


def tokens_file(path):
    secrets_by_role = {r: secrets.token_hex(24) for r in ("admin", "operator", "viewer")}
    with open(path, "w") as f:
        f.write("tokens:\n")
        for role, secret in secrets_by_role.items():
            digest = hashlib.sha256(secret.encode()).hexdigest()
            f.write(f"  - {{name: {role}-user, role: {role}, sha256: {digest}}}\n")
    return secrets_by_role


# The viewer's time zone in the browser (UTC+8, no daylight saving): shown times must differ
# from UTC by eight hours.
VIEWER_TZ = "Asia/Shanghai"
VIEWER_OFFSET_HOURS = 8


def browser(width=1280, height=800, tz=VIEWER_TZ):
    o = Options()
    o.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--lang=en-US", "--no-first-run",
              "--disable-extensions", "--disable-background-networking"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium inherits chromedriver's environment: TZ sets the zone its pages see.
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"),
                      env={**os.environ, "TZ": tz})
    d = webdriver.Chrome(service=service, options=o)
    d.set_page_load_timeout(60)
    return d


class Console:
    def __init__(self, driver, base, device=None):
        self.d = driver
        self.base = base
        # An emulated device's (width, height), set with set_device.
        self.device = device

    def set_device(self, width, height):
        """Emulates a device of this viewport (CSS px): the page lays out at that width."""
        self.device = (width, height)
        self.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": True})

    def go(self, path):
        self.d.get(self.base + path)

    def shot(self, name):
        """The whole page (the window stretched to the page's height, at most 4,000 px)."""
        os.makedirs(SHOTS, exist_ok=True)
        height = self.d.execute_script("return document.documentElement.scrollHeight")
        if self.device:
            w, h = self.device
            self.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": w, "height": max(h, min(int(height), 4000)), "deviceScaleFactor": 1,
                "mobile": True})
            self.d.save_screenshot(os.path.join(SHOTS, name + ".png"))
            self.set_device(w, h)
            return
        size = self.d.get_window_size()
        self.d.set_window_size(size["width"], max(size["height"], min(int(height) + 140, 4000)))
        self.d.save_screenshot(os.path.join(SHOTS, name + ".png"))
        self.d.set_window_size(size["width"], size["height"])

    def console_errors(self):
        return [e for e in self.d.get_log("browser") if e.get("level") == "SEVERE"]

    def h1(self):
        return self.d.find_element(By.TAG_NAME, "h1").text

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def submit(self, element):
        """Clicks a link or a form's button and waits for the next page to load."""
        old = self.d.find_element(By.TAG_NAME, "html")
        element.click()

        def gone(_):
            # The old page's root is gone once the next page replaced it. chromedriver says so
            # with a stale-element error, or, at times, with "Node with given id does not belong
            # to the document": either means the navigation happened.
            try:
                old.tag_name
                return False
            except WebDriverException:
                return True

        WebDriverWait(self.d, 30).until(gone)
        WebDriverWait(self.d, 30).until(
            lambda d: d.execute_script("return document.readyState") == "complete")

    def sign_in(self, token):
        self.go("/login")
        self.sign_in_here(token)

    def sign_in_here(self, token):
        """Signs in on the sign-in page the browser is on (after a redirect to it)."""
        box = self.d.find_element(By.ID, "token")
        box.clear()
        box.send_keys(token)
        self.submit(self.d.find_element(By.CSS_SELECTOR, "form button[type=submit]"))

    def sign_out(self):
        self.submit(self.d.find_element(By.CSS_SELECTOR, "header form[action='/logout'] button"))

    def forms(self):
        return [f.get_attribute("action") for f in self.d.find_elements(By.TAG_NAME, "form")
                if f.get_attribute("method").lower() == "post"]

    def flash(self):
        found = self.d.find_elements(By.CSS_SELECTOR, ".flash")
        return " ".join(f.text for f in found)


def first_paint(driver, url):
    driver.get(url)
    fcp = None
    # The paint entry is recorded shortly after the load event; wait for it.
    for _ in range(50):
        fcp = driver.execute_script(
            "const e = performance.getEntriesByName('first-contentful-paint')[0];"
            "return e ? e.startTime : null;")
        if fcp is not None:
            break
        time.sleep(0.1)
    nav = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return n ? {response: n.responseEnd, dom: n.domContentLoadedEventEnd} : null;")
    return fcp, nav


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} not found: build it first (cargo build --release)")
    work = tempfile.mkdtemp(prefix="akwatch-browser-")
    shutil.rmtree(SHOTS, ignore_errors=True)
    os.makedirs(SHOTS, exist_ok=True)
    toks = tokens_file(os.path.join(work, "tokens.yaml"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    store = os.path.join(work, "akwatch.db")
    log = open(os.path.join(work, "console.log"), "w+")
    print(f"== akwatch console on {base} (work dir {work})")
    proc = subprocess.Popen(
        [BIN, "console", "--listen", f"127.0.0.1:{port}", "--tokens", os.path.join(work, "tokens.yaml"),
         "--store", store], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    timings = {}
    procs = [proc]
    drivers = []
    try:
        wait_port(port, proc)
        log.seek(0)
        started = log.read()
        m = re.search(r"policy entries made in the console are written to (\S+)", started)
        check(m is not None, "the console names the directory its policy entries go to")
        api_dir = m.group(1) if m else ""
        d = browser()
        drivers.append(d)
        c = Console(d, base)
        try:
            run_console_checks(c, toks, base, api_dir, store)
        except Exception:
            # Where it stopped, for the log: the page, its text, a screenshot.
            print(f"stopped on {d.current_url}:\n{c.text()[:2000]}")
            c.shot("failure")
            raise
        # A narrow window: a 400 px wide device, emulated (a real window is clamped to 500 px).
        n = browser()
        drivers.append(n)
        nc = Console(n, base)
        nc.set_device(400, 900)
        nc.sign_in(toks["viewer"])
        for path, name in (("/", "narrow-overview"), ("/keys", "narrow-keys"),
                           ("/ips", "narrow-ips")):
            nc.go(path)
            width = n.execute_script("return document.documentElement.scrollWidth")
            inner = n.execute_script("return window.innerWidth")
            check(inner <= 410, f"{path}: the page is laid out for a narrow viewport ({inner} px)")
            check(width <= inner + 1, f"{path} fits a narrow window without scrolling sideways ({width} <= {inner})")
            nc.shot(name)
        timings.update(measure_10k(toks, work, drivers))
    finally:
        for d in drivers:
            try:
                d.quit()
            except Exception:
                pass
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    with open(os.path.join(SHOTS, "timings.json"), "w") as f:
        json.dump(timings, f, indent=2)
    print(f"\nfigures: {json.dumps(timings)}")
    print(f"screenshots: {SHOTS}")
    print(f"{checks - len(failures)} of {checks} checks passed")
    if failures:
        print("failed:\n  " + "\n  ".join(failures))
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


def run_console_checks(c, toks, base, api_dir, store):
    d = c.d
    truth = json.load(open(os.path.join(ROOT, "examples", "ground-truth.json")))
    leaked = next(a["key"] for a in truth["attacks"] if a["expect"][0] == "ak.leaked_key_use")

    print("== sign-in and safety")
    c.go("/")
    check(d.current_url.startswith(base + "/login"), "an unsigned visitor is sent to the sign-in page")
    c.shot("login")
    c.sign_in("not-a-token")
    check("not valid" in c.text(), "a wrong token is refused with a message")
    c.sign_in(toks["admin"])
    check(c.h1() == "Overview", "the admin token signs in and lands on the overview")
    cookie = d.get_cookie("akwatch_session")
    check(cookie is not None and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict",
          f"the session cookie is HttpOnly and SameSite=Strict ({cookie})")
    check(toks["admin"] not in d.current_url, "the token is not in the URL")
    with urllib.request.urlopen(base + "/login") as r:
        csp = r.headers.get("Content-Security-Policy", "")
    check("script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp,
          f"the CSP header allows no inline script and no outside origin ({csp})")
    # A form POST without the CSRF token, with a valid session, is refused.
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(base + "/login").read().decode()
    login_csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form).group(1)
    opener.open(urllib.request.Request(base + "/login", data=urllib.parse.urlencode(
        {"token": toks["admin"], "next": "/", "csrf": login_csrf}).encode()))
    check(any(ck.name == "akwatch_session" for ck in jar), "a script-less client signs in with the form's CSRF value")
    alarm_ids = api(base, toks["admin"], "/alarms?status=pending&limit=500")["items"]
    target = alarm_ids[-1]["alarm_id"]
    try:
        opener.open(urllib.request.Request(f"{base}/alarms/{target}/status", data=urllib.parse.urlencode(
            {"status": "handled", "comment": "forged"}).encode()))
        refused = False
    except urllib.error.HTTPError as e:
        refused = e.code == 403
    check(refused, "a form POST without the CSRF token is refused (403)")
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/login", data=urllib.parse.urlencode(
            {"token": toks["admin"], "next": "/"}).encode()))
        refused = False
    except urllib.error.HTTPError as e:
        refused = e.code == 403
    check(refused, "a sign-in form without its CSRF value (a forged login) is refused (403)")
    # A deep link keeps its filters through sign-in.
    d.delete_all_cookies()
    c.go("/alarms?status=pending&severity=critical")
    c.sign_in_here(toks["viewer"])
    check(d.current_url == base + "/alarms?status=pending&severity=critical",
          f"a deep link with filters survives sign-in ({d.current_url})")
    d.delete_all_cookies()
    c.sign_in(toks["admin"])
    check(api(base, toks["admin"], f"/alarms/{target}")["triage_status"] == "pending",
          "the refused POST changed nothing")

    print("== every page")
    c.go("/")
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = d.switch_to.active_element
    check(active.get_attribute("class") == "skip", "the first Tab reaches the skip link")
    pages = [("/", "overview"), ("/?days=30", "overview-30-days"), ("/keys", "keys"),
             ("/ips", "ips"), ("/accounts", "accounts"), ("/alarms", "alarms"),
             ("/risks", "risks"), ("/policies/allowlist", "policies-allowlist"),
             ("/policies/ip-hiding", "policies-ip-hiding"), ("/policies/alarm", "policies-alarm"),
             # (audit.png is taken after the triage and allowlisting below, with their entries.)
             ("/audit", None)]
    first_ip = api(base, toks["admin"], "/ips?sort=calls")["items"][0]["ip"]
    first_account = api(base, toks["admin"], "/accounts")["items"][0]
    first_risk = api(base, toks["admin"], "/risks")["items"][0]["id"]
    leak_alarm = next(a for a in api(base, toks["admin"], f"/alarms?key={leaked}&limit=100")["items"]
                      if a["rule_id"] == "ak.leaked_key_use")
    seq = api(base, toks["admin"], "/alarms?rule=ak.attack_sequence")["items"]
    pages += [(f"/keys/{leaked}", "key"), (f"/ips/{first_ip}", "ip"),
              (f"/accounts/{first_account['cloud']}/{first_account['account']}", "account"),
              (f"/alarms/{leak_alarm['alarm_id']}", "alarm"),
              (f"/alarms/{leak_alarm['alarm_id']}/allowlist", "alarm-allowlist"),
              (f"/risks/{first_risk}", "risk"), ("/policies/allowlist/ci-runners", "policy-entry")]
    if check(len(seq) > 0, "the bundled scenario raised an attack sequence"):
        pages.append((f"/alarms/{seq[0]['alarm_id']}", "alarm-sequence"))
    d.get_log("browser")
    session = d.get_cookie("akwatch_session")["value"]
    for path, name in pages:
        # The security headers on every page (as served to this session), not only the sign-in.
        with urllib.request.urlopen(urllib.request.Request(
                base + path, headers={"Cookie": f"akwatch_session={session}"})) as r:
            csp = r.headers.get("Content-Security-Policy", "")
            status = r.status
        check(status == 200 and "script-src 'self'" in csp and "unsafe-inline" not in csp
              and "default-src 'none'" in csp, f"{path} is served with the CSP header ({status}, {csp!r})")
        c.go(path)
        errors = c.console_errors()
        ids = d.execute_script(
            "const s = {}; const dup = [];"
            "document.querySelectorAll('[id]').forEach(e => { if (s[e.id]) dup.push(e.id); s[e.id] = 1; });"
            "return dup;")
        check(not ids, f"{path} has no duplicate element id {ids if ids else ''}")
        unlabelled = d.execute_script(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
            ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name);")
        check(not unlabelled, f"{path}: every control has a label {unlabelled if unlabelled else ''}")
        ok = d.find_elements(By.CSS_SELECTOR, "main h1") and "no such page" not in c.text()
        check(bool(ok), f"{path} opens ({c.h1() if ok else 'no heading'})")
        check(not errors, f"{path} logs no console error {errors if errors else ''}")
        if name:
            c.shot(name)
    c.go(f"/alarms/{seq[0]['alarm_id']}" if seq else "/alarms")
    check(len(d.find_elements(By.CSS_SELECTOR, "#members ~ div table tbody tr")) >= 3 if seq else False,
          "the attack sequence's page lists its member alarms")
    c.go("/")
    bars, total = chart_bars(d, "figure.chart")
    check(total > 0 and bars > 0,
          f"the overview's alarm trend chart draws bars of non-zero height ({bars} bars, {total} alarms)")
    t = d.find_element(By.CSS_SELECTOR, "time[datetime]")
    check(t.get_attribute("title").endswith("UTC") and t.text != t.get_attribute("title"),
          f"times show in the viewer's zone with UTC on hover ({t.text!r} / {t.get_attribute('title')!r})")
    zone = d.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone")
    check(zone == VIEWER_TZ, f"the browser runs in {VIEWER_TZ} ({zone})")
    # The leaked key's credential-report dates: <time>, converted to UTC+8, UTC on hover.
    c.go(f"/keys/{leaked}")
    for label in ("Principal created", "Key last rotated"):
        found = d.find_elements(By.XPATH, f"//dt[normalize-space()='{label}']/following-sibling::dd[1]/time")
        if not check(bool(found), f"the key page's '{label}' is a time element"):
            continue
        shown, utc = found[0].text, found[0].get_attribute("title")
        check(converted(shown, utc),
              f"'{label}' shows {VIEWER_TZ} time (+{VIEWER_OFFSET_HOURS} h) with UTC on hover ({shown!r} / {utc!r})")
    # The alarm page's source IP: where it is (the place the alarm's summary names), its ASN.
    c.go(f"/alarms/{leak_alarm['alarm_id']}")
    src = leak_alarm["source_ips"][0]
    row = d.find_element(By.XPATH, "//h2[@id='ips']/following-sibling::div//tbody/tr[1]").text
    check(src["city"] and src["city"] in leak_alarm["summary"]
          and f"{src['city']}, {src['country']}" in row and f"AS{src['asn']}" in row and "unknown" not in row,
          f"the leaked key's alarm shows its source IP's place and ASN ({row!r})")

    print("== the leaked key from the overview in at most three clicks")
    # As a user would: from the overview, click the key when the page shows it, else the way
    # toward it (the pending critical alarms, then their key filter); count every click.
    c.go("/")
    clicks, path = 0, []
    ways = ["a[href='/keys?has_alarms=1']", "a[href='/alarms?status=pending&severity=critical']"]
    while clicks < 3 and not d.current_url.endswith(f"/keys/{leaked}"):
        target = [a for a in d.find_elements(By.CSS_SELECTOR, f"main a[href='/keys/{leaked}']") if a.is_displayed()]
        if not target:
            target = [a for w in ways for a in d.find_elements(By.CSS_SELECTOR, f"main {w}") if a.is_displayed()]
        if not target:
            break
        path.append(target[0].get_attribute("href"))
        c.submit(target[0])
        clicks += 1
    check(d.current_url.endswith(f"/keys/{leaked}") and leaked in c.h1() and 1 <= clicks <= 3,
          f"{clicks} click(s) from the overview open {leaked} ({' -> '.join(path)})")
    body = c.text()
    check("Access key used by someone else" in body or "leaked" in body.lower(),
          "the key's page shows its leak alarm")
    check("Security advice" in body and "Disable the key" in body, "the key's page gives advice")
    bars, total = chart_bars(d, "#perday ~ figure.chart")
    check(total > 0 and bars > 0, f"the key's page draws calls per day ({bars} bars of {total} calls)")

    print("== handle one alarm")
    pending = api(base, toks["admin"], "/alarms?status=pending&sort=severity_rank&limit=500")["items"]
    handle = next(a for a in pending if a["rule_id"] == "ak.leaked_key_use")
    c.sign_out()
    c.sign_in(toks["operator"])
    c.go(f"/alarms/{handle['alarm_id']}")
    d.find_element(By.ID, "triage-comment").send_keys("key disabled, new one issued")
    c.submit(d.find_element(By.CSS_SELECTOR, "button[name=status][value=handled]"))
    check("Marked handled." in c.flash(), "handling shows a confirmation")
    check("handled" in d.find_element(By.CSS_SELECTOR, "dl.facts").text, "the alarm's status is handled")
    check("alarm.status" in d.find_element(By.ID, "history").find_element(By.XPATH, "..").text,
          "the alarm's history lists the change")
    c.shot("alarm-handled")
    c.go("/audit")
    row = d.find_element(By.CSS_SELECTOR, "tbody tr").text
    check("alarm.status" in row and "operator-user" in row and "key disabled" in row,
          f"the audit log has the change with its operator and comment ({row!r})")

    print("== allowlist another alarm through the form")
    allow = next(a for a in pending if a["rule_id"] in ("ak.new_source_ip", "ak.sensitive_api", "ak.key_probe")
                 and a.get("access_key_id") and a["source_ips"] and a["alarm_id"] != handle["alarm_id"])
    c.go(f"/alarms/{allow['alarm_id']}")
    c.submit(d.find_element(By.LINK_TEXT, "Allowlist…"))
    check(not d.find_elements(By.CSS_SELECTOR, "button[name=action][value=save]"),
          "the allowlist form cannot save before its preview")
    d.find_element(By.ID, "scope-ip").click()
    d.find_element(By.ID, "f-comment").send_keys("known office egress")
    c.submit(d.find_element(By.CSS_SELECTOR, "button[name=action][value=preview]"))
    entry = d.find_element(By.CSS_SELECTOR, "pre.entry").text
    check(allow["access_key_id"] in entry and allow["rule_id"] in entry and allow["source_ips"][0]["ip"] in entry,
          "the preview shows the entry (key, rule, IP) before it is saved")
    check("What it would have matched" in c.text() and "stored alarms" in c.text(),
          "the preview shows what the entry would have matched")
    check(api(base, toks["admin"], f"/alarms/{allow['alarm_id']}")["triage_status"] == "pending",
          "a preview saves nothing")
    c.shot("alarm-allowlist-preview")
    c.submit(d.find_element(By.CSS_SELECTOR, "button[name=action][value=save]"))
    check("Allowlisted" in c.flash(), "saving shows a confirmation")
    check("allowlisted" in d.find_element(By.CSS_SELECTOR, "dl.facts").text, "the alarm's status is allowlisted")
    c.go("/audit")
    row = d.find_element(By.CSS_SELECTOR, "tbody tr").text
    check("alarm.allowlist" in row and "operator-user" in row and "known office egress" in row,
          f"the audit log has the allowlisting with its operator and comment ({row!r})")
    c.go("/policies/allowlist")
    check(f"alarm-{allow['alarm_id']}" in c.text(), "the new entry is listed among the policies")
    # The next replay: with the console's policy entries the alarm is no longer raised.
    policies = ["--policies", os.path.join(ROOT, "rules", "policies"),
                "--policies", os.path.join(ROOT, "examples", "policies")]
    base_run = subprocess.run([BIN, "replay", *policies], cwd=ROOT, capture_output=True, text=True, timeout=300)
    again = subprocess.run([BIN, "replay", *policies, "--policies", api_dir], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    check(base_run.returncode == 0 and allow["alarm_id"] in base_run.stdout,
          "without the entry, a replay raises the alarm again (same id)")
    check(again.returncode == 0 and allow["alarm_id"] not in again.stdout,
          "with the console's policy entries, the next replay suppresses the alarm")
    m = re.search(rf"^\s*{re.escape(allow['rule_id'])}\s+(?:[a-z]+\s+)?\d+\s+\d+\s+(\d+)\s*$", again.stderr, re.M)
    check(m is not None and int(m.group(1)) > 0,
          f"the replay's summary counts the allowlisted hits of {allow['rule_id']}")

    print("== bulk triage")
    c.go("/alarms?status=pending&rule=ak.impossible_travel")
    boxes = d.find_elements(By.CSS_SELECTOR, "input[name=id]")
    picked = [b.get_attribute("value") for b in boxes[:2]]
    for b in boxes[:2]:
        b.click()
    Select(d.find_element(By.ID, "bulk-status")).select_by_value("ignored")
    d.find_element(By.ID, "bulk-comment").send_keys("expected travel")
    c.submit(d.find_element(By.CSS_SELECTOR, "fieldset.bulk button"))
    check("updated" in c.flash(), "bulk triage shows a confirmation")
    check(len(picked) == 2 and all(api(base, toks["admin"], f"/alarms/{i}")["triage_status"] == "ignored" for i in picked),
          "both selected alarms are ignored")
    c.go("/alarms?status=pending")
    d.find_element(By.ID, "pick-all").click()
    check(all(b.is_selected() for b in d.find_elements(By.CSS_SELECTOR, "input[name=id]")),
          "select all selects every alarm of the page")
    c.go("/audit")
    rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "main tbody tr")]
    check(any("alarm.status" in r and handle["alarm_id"] in r for r in rows)
          and any("alarm.allowlist" in r and allow["alarm_id"] in r for r in rows),
          f"the audit log lists the handled and the allowlisted alarm ({len(rows)} rows)")
    c.shot("audit")

    print("== an IP note holding markup is shown as text")
    nasty = "<script>window.__xss=1</script><b>bold</b> & \"quotes\""
    c.go(f"/ips/{first_ip}")
    box = d.find_element(By.ID, "note-text")
    box.clear()
    box.send_keys(nasty)
    c.submit(d.find_element(By.CSS_SELECTOR, "form.note button"))
    check("Note saved." in c.flash(), "the note is saved")
    check(d.find_element(By.ID, "note-text").get_attribute("value") == nasty, "the note reads back unchanged")
    check(d.execute_script("return window.__xss === undefined"), "the note's script did not run")
    c.go("/ips?sort=calls")
    cell = next(td for td in d.find_elements(By.CSS_SELECTOR, "td.wrap") if "window.__xss" in td.text)
    check("<script>" in cell.text and not cell.find_elements(By.TAG_NAME, "b"),
          "the IP list shows the note as text, no markup")
    check(not c.console_errors(), "no console error where the note is shown")
    c.sign_out()

    print("== policy editor (admin)")
    c.sign_in(toks["admin"])
    c.go(f"/policies/allowlist?keys={leaked}")
    check(leaked in d.find_element(By.ID, "p-keys").get_attribute("value"),
          "'Allowlist this key' opens the editor prefilled with the key")
    d.find_element(By.ID, "p-id").send_keys("office-egress")
    d.find_element(By.ID, "p-ips").send_keys("203.0.113.300")
    d.find_element(By.ID, "p-comment").send_keys("office")
    c.submit(d.find_element(By.CSS_SELECTOR, "#editor button[value=save]"))
    msg = c.flash()
    check("api-allowlist.yaml:" in msg and "not an IP or CIDR" in msg,
          f"a bad entry gets the policy loader's own message with file and line ({msg!r})")
    c.shot("policy-error")
    ips = d.find_element(By.ID, "p-ips")
    ips.clear()
    ips.send_keys("203.0.113.0/24")
    c.submit(d.find_element(By.CSS_SELECTOR, "#editor button[value=preview]"))
    check("What it would have matched" in c.text(), "the editor previews the entry's matches")
    c.submit(d.find_element(By.CSS_SELECTOR, "#editor button[value=save]"))
    check("saved" in c.flash().lower(), "a good entry is saved")
    c.go("/policies/allowlist/office-egress")
    check("office-egress" in c.h1() and d.find_elements(By.CSS_SELECTOR, "#editor button[value=delete]"),
          "the saved entry opens in the editor")
    c.shot("policy-edit")
    c.submit(d.find_element(By.CSS_SELECTOR, "#editor button[value=delete]"))
    check("deleted" in c.flash().lower(), "the entry is deleted")
    c.sign_out()

    print("== a viewer sees no write action")
    c.sign_in(toks["viewer"])
    for path in ("/", f"/keys/{leaked}", f"/alarms/{allow['alarm_id']}", f"/alarms/{handle['alarm_id']}",
                 "/alarms", f"/ips/{first_ip}", f"/risks/{first_risk}", "/policies/allowlist",
                 "/policies/allowlist/ci-runners"):
        c.go(path)
        forms = [f for f in c.forms() if not f.endswith("/logout")]
        buttons = [b.text for b in d.find_elements(By.CSS_SELECTOR, "main form[method=post] button, main a.button")]
        check(not forms and not buttons, f"viewer on {path}: no write form or action ({forms} {buttons})")
    c.go(f"/alarms/{handle['alarm_id']}")
    check(d.find_elements(By.CSS_SELECTOR, "dl.facts") and "Alarm id" in c.text()
          and not [f for f in c.forms() if not f.endswith("/logout")],
          "the viewer's alarm page shows the alarm, with no write action")
    c.shot("viewer-alarm")
    c.go(f"/ips/{first_ip}")
    check("window.__xss" in d.find_element(By.CSS_SELECTOR, ".note-text").text,
          "the viewer sees the note as text")
    c.sign_out()


def chart_bars(d, figure):
    """(bars of non-zero height, the sum of the chart's numbers table) of a server-drawn chart."""
    return d.execute_script(
        "const f = document.querySelector(arguments[0]); if (!f) return [0, 0];"
        "const bars = [...f.querySelectorAll('svg rect')].filter(r =>"
        "  (r.getAttribute('fill') || '').toLowerCase() === '#2563eb' && r.getBBox().height >= 1"
        "  && r.getBBox().width >= 1).length;"
        "const total = [...f.querySelectorAll('details td.num')].reduce((s, t) => s + Number(t.textContent), 0);"
        "return [bars, total];", figure)


def converted(shown, utc):
    """Whether `shown` (the browser's local text) is `utc` ("YYYY-MM-DD HH:MM:SS UTC") in UTC+8."""
    m = re.match(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) UTC$", utc or "")
    h = re.search(r"\b(\d{1,2}):(\d{2}):(\d{2})\s*([AP]M)?", shown or "")
    if not m or not h or shown == utc:
        return False
    hour = int(h.group(1)) % 12 + (12 if h.group(4) == "PM" else 0) if h.group(4) else int(h.group(1))
    return (hour == (int(m.group(4)) + VIEWER_OFFSET_HOURS) % 24 and h.group(2) == m.group(5)
            and ("GMT+8" in shown or "+08" in shown or "CST" in shown))


def api(base, token, path):
    req = urllib.request.Request(base + "/api/v1" + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def measure_10k(toks, work, drivers):
    print("== time to first paint with 10,000 keys")
    scenario = os.path.join(work, "scenario-10k")
    t0 = time.time()
    subprocess.run([BIN, "simulate", "--keys", "10000", "--days", "2", "--out", scenario], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    store = os.path.join(work, "10k.db")
    subprocess.run([BIN, "replay", "--store", store, os.path.join(scenario, "logs")], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    print(f"  (scenario and store built in {time.time() - t0:.0f} s)")
    port = free_port()
    proc = subprocess.Popen([BIN, "serve", "--store", store, "--listen", f"127.0.0.1:{port}",
                             "--tokens", os.path.join(work, "tokens.yaml")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    try:
        wait_port(port, proc)
        keys = api(f"http://127.0.0.1:{port}", toks["viewer"], "/keys?limit=1")["total"]
        check(keys >= 10000, f"the store holds {keys} keys")
        d = browser()
        drivers.append(d)
        c = Console(d, f"http://127.0.0.1:{port}")
        c.sign_in(toks["viewer"])
        for path, name in (("/", "overview"), ("/keys", "keys"), ("/keys?sort=calls", "keys_by_calls"),
                           ("/keys?status=active", "keys_status_filter")):
            best = None
            for _ in range(3):
                fcp, nav = first_paint(d, c.base + path)
                if fcp is not None and (best is None or fcp < best[0]):
                    best = (fcp, nav)
            check(best is not None, f"{path} paints (10,000 keys)")
            if best:
                out[f"{name}_first_paint_ms"] = round(best[0], 1)
                out[f"{name}_response_ms"] = round(best[1]["response"], 1) if best[1] else None
                print(f"  {path}: first contentful paint {best[0]:.0f} ms (response {best[1]['response']:.0f} ms)")
        c.go("/keys")
        check("of " in d.find_element(By.CSS_SELECTOR, ".pager").text and
              len(d.find_elements(By.CSS_SELECTOR, "tbody tr")) == 50,
              "the key list is paged on the server (50 rows of 10,000)")
        c.shot("keys-10k")
        out["keys"] = keys
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return out


if __name__ == "__main__":
    main()
