"""Drives the agent's web page in a real browser (Debian's chromium, headless, through
chromedriver and Selenium) the way a router owner uses it: a wrong token, signing in,
installing sing-box from the feed while the progress bar moves, live logs, routing a LAN
device the router knows, a phone-sized screen, uninstalling, signing out.

usage: browser.py URL TOKEN SCREENSHOT_DIR DEVICE_MAC
Prints one JSON line of what it saw; exits non-zero (with the reason) on the first failure.
Screenshots: 01-wrong-token … 08-signed-out (.png) in SCREENSHOT_DIR.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, token, shots, mac = sys.argv[1:5]
os.makedirs(shots, exist_ok=True)
os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach for the internet

# The page's own HTTP headers, as a browser gets them.
with urllib.request.urlopen(url) as r:
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp, csp
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.read().decode()
    assert "<script src=\"/app.js\"" in html and "<script>" not in html

# A page of another site cannot drive the API, nor lock the owner out by failing to: more
# cross-origin attempts than the failed-token allowance (10), then the owner signs in below.
for _ in range(12):
    req = urllib.request.Request(url + "graphql", data=b'{"query":"{ agent { version } }"}',
                                 headers={"content-type": "application/json", "origin": "http://evil.example"})
    try:
        urllib.request.urlopen(req)
        raise SystemExit("a cross-origin request was answered")
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        assert e.code == 403 and body["errors"][0]["extensions"]["code"] == "CROSS_ORIGIN", body

opts = Options()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1200,900", "--no-first-run", "--disable-background-networking"):
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
seen = {}


def shot(name):
    d.save_screenshot(os.path.join(shots, name + ".png"))


def wait(what, cond, timeout=60):
    def safe(_):
        try:
            return cond()
        except StaleElementReferenceException:
            return False
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05).until(safe)
    except Exception:
        shot("failed")
        raise SystemExit(f"timed out waiting for {what}; page text:\n{d.find_element(By.TAG_NAME, 'body').text}")


def by(css):
    return d.find_element(By.CSS_SELECTOR, css)


def card(name):
    """The instance card's id, status and progress value, read in one step (the list is
    redrawn on every event, so element handles go stale)."""
    return d.execute_script("""
        const c = [...document.querySelectorAll('#instances .card')]
          .find((c) => c.querySelector('b').textContent === arguments[0]);
        if (!c) return null;
        const p = c.querySelector('progress');
        return { id: c.dataset.id, status: c.dataset.status, value: p ? p.value : null, text: c.innerText };
    """, name)


def click_in(name, label):
    """Clicks the button labelled `label` on the instance card `name` (retried if redrawn)."""
    for _ in range(50):
        try:
            c = card(name)
            d.find_element(By.XPATH, f"//*[@data-id='{c['id']}']//button[text()='{label}']").click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise SystemExit(f"cannot click {label} on {name}")


try:
    d.get(url)
    # A wrong token: an error with its code, still on the login form, nothing stored.
    by("#token").send_keys("not-the-token")
    by("#loginform button").click()
    wait("the wrong-token error", lambda: "UNAUTHENTICATED" in by("#loginerr").text)
    assert by("#app").get_attribute("hidden") is not None
    assert d.execute_script("return sessionStorage.getItem('nnc-token')") is None
    seen["wrong_token"] = by("#loginerr").text
    shot("01-wrong-token")

    by("#token").send_keys(token)
    by("#loginform button").click()
    wait("the signed-in page", lambda: by("[data-feature='sing-box'] button").is_enabled())
    wait("the live connection", lambda: by("#live").text == "live")
    assert token not in d.current_url
    assert d.execute_script("return sessionStorage.getItem('nnc-token')") == token
    shot("02-signed-in")

    # Install from the form generated from settingsSchema.
    by("[data-feature='sing-box'] button").click()
    wait("the install dialog", lambda: by("#dialog").get_attribute("open") is not None)
    name = by("#dialog input[name=name]")
    name.clear()
    name.send_keys("web")
    by("#dialog details summary").click()
    by("#dialog input[name=mixedPort]").send_keys("7890")
    by("#dialog button[type=submit]").click()
    wait("the new instance", lambda: card("web") is not None)

    # The bar moves while the feed (rate-limited) sends the binary.
    values, mid_shot = [], False
    deadline = time.time() + 120
    while time.time() < deadline:
        c = card("web")
        if c and c["value"] is not None:
            v = float(c["value"])
            if not values or v != values[-1]:
                values.append(v)
            if 20 < v < 80 and not mid_shot:
                shot("03-progress")
                mid_shot = True
        if c and c["status"] in ("RUNNING", "FAILED"):
            break
        time.sleep(0.05)
    seen["progress"] = values
    assert card("web")["status"] == "RUNNING", card("web")["text"]
    partial = [v for v in values if 0 < v < 100]
    assert len(partial) >= 3, f"the bar did not move: {values}"
    assert partial == sorted(partial), f"the bar went backwards: {values}"
    assert mid_shot
    shot("04-running")

    # Live logs: the tail, then lines as the service prints them (a restart prints more).
    click_in("web", "Logs")
    wait("log lines", lambda: "sing-box started" in by("#dialog pre").text)
    before = by("#dialog pre").text.count("sing-box started")
    d.execute_script("""
        fetch('/graphql', {method: 'POST', headers: {'content-type': 'application/json',
          authorization: 'Bearer ' + sessionStorage.getItem('nnc-token')},
          body: JSON.stringify({query: 'mutation($i: ID!) { restartInstance(id: $i) { status } }',
            variables: {i: arguments[0]}})});""", card("web")["id"])
    wait("a live log line after the restart", lambda: by("#dialog pre").text.count("sing-box started") > before)
    assert "\x1b[" not in by("#dialog pre").text
    shot("05-logs")
    by("#dialog button").click()

    # Device routing, offered the devices the router knows.
    wait("the LAN device as a choice", lambda: d.find_elements(By.CSS_SELECTOR, f"#lan option[value='{mac}']"))
    by("#routeform input[name=device]").send_keys(mac)
    by("#routeform button[type=submit]").click()
    wait("the routed device", lambda: mac in by("#devices table").text)
    shot("06-devices")
    by("#devices table button").click()
    wait("the device unrouted", lambda: not d.find_elements(By.CSS_SELECTOR, "#devices table"))

    # A phone screen: nothing wider than the viewport.
    d.set_window_size(390, 844)
    time.sleep(0.3)
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide on a 390px screen"
    shot("07-phone")
    d.set_window_size(1200, 900)

    # Uninstall, confirmed in the dialog.
    click_in("web", "Uninstall…")
    wait("the confirmation", lambda: by("#confirm").is_displayed())
    by("#confirm").click()
    wait("the instance gone", lambda: card("web") is None, timeout=120)

    by("#signout").click()
    wait("the login form", lambda: by("#login").get_attribute("hidden") is None)
    assert d.execute_script("return sessionStorage.getItem('nnc-token')") is None
    shot("08-signed-out")

    # No CSP violation, no script error, and the token never printed.
    logs = d.get_log("browser")
    bad = [l for l in logs if l["level"] == "SEVERE" and "Failed to load resource" not in l["message"]
           or "Content Security Policy" in l["message"]]
    assert not bad, bad
    assert not any(token in l["message"] for l in logs)
    seen["console"] = len(logs)
    print(json.dumps(seen))
finally:
    d.quit()
