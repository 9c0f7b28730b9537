"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
open it through the printed link, see frames arrive, teach three objects by clicking, see each
recognised, rename one, forget one, reload and see the same state. Skipped, with the reason, where
Chromium, its driver or Selenium is not installed (.ci/run installs them).

The screenshot goes to tmp; with LATENT_REPLAY_WEB_SCREENSHOT=PATH (e.g. docs/web_ui.png) it is also
written there (that is how the README's picture is made).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the web extra (aiohttp) is not installed")
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    pytest.skip(f"no Chromium: {CHROMIUM} and {DRIVER} are needed (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from web_helpers import ServerProc, known  # noqa: E402

OBJECTS = ("disc", "square", "triangle")  # the steered camera's objects 0, 1, 2
TEACH = 30

FRAME_HASH = """
const img = document.getElementById('video');
if (!img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data; let h = 0;
for (let i = 0; i < d.length; i += 97) h = (h * 31 + d[i]) >>> 0;
return [c.width, h];
"""


@pytest.fixture
def served(tmp_path):
    proc = ServerProc(["stream", "--source", "camera", "--headless", "--serve", "127.0.0.1:0", "--weights", "random",
                       "--state", str(tmp_path / "state"), "--threads", "1", "--teach-frames", str(TEACH),
                       "--serve-fps", "10"], tmp_path, fps=25)
    yield proc
    proc.stop()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, what, limit_s: float = 60, why: str = ""):
    return WebDriverWait(driver, limit_s, poll_frequency=0.2).until(lambda d: what(d), message=why)


def classes_shown(driver):
    """name -> its frame count as the page shows them (read in one go: the list is redrawn live)."""
    return driver.execute_script(
        "const r = {}; for (const li of document.querySelectorAll('#classes li[data-name]'))"
        " r[li.querySelector('.name').textContent] = li.querySelector('.dim').textContent; return r;")


def teach_by_clicking(driver, name: str) -> None:
    box = driver.find_element(By.ID, "teach-name")
    box.clear()
    box.send_keys(name)
    driver.find_element(By.ID, "teach-btn").click()
    wait(driver, lambda d: f"{TEACH} frames" == classes_shown(d).get(name), 90, f"'{name}' was not learned")


def test_watch_teach_rename_forget_reload(served, browser, tmp_path):
    driver = browser
    driver.get(f"{served.base}/?token={served.token}")
    assert driver.current_url == served.base + "/"  # the token went into the cookie, out of the address
    # frames arrive: the picture has the overlay's size and changes
    first = wait(driver, lambda d: d.execute_script(FRAME_HASH), 30, "no frame arrived")
    assert first[0] == 384
    wait(driver, lambda d: d.execute_script(FRAME_HASH)[1] != first[1], 10, "the picture does not change")
    wait(driver, lambda d: d.find_element(By.ID, "conn").text == "live", 20, "no event stream")

    for obj, name in enumerate(OBJECTS):
        served.show(obj)
        time.sleep(0.5)  # the camera turns to it (and the smoothing forgets the last one)
        teach_by_clicking(driver, name)
    for obj, name in enumerate(OBJECTS):
        served.show(obj)
        wait(driver, lambda d: d.find_element(By.ID, "prediction").text.startswith(name + " "), 30,
             f"'{name}' in view is not recognised")

    # rename: a name with markup is shown as text, never run or rendered
    odd = "<b>box</b>"
    driver.find_element(By.CSS_SELECTOR, "#rename-from option[value='square']").click()
    driver.find_element(By.ID, "rename-to").send_keys(odd)
    driver.find_element(By.ID, "rename-btn").click()
    wait(driver, lambda d: odd in classes_shown(d) and "square" not in classes_shown(d), 30, "not renamed")
    assert not driver.find_elements(By.CSS_SELECTOR, "#classes b")
    served.show(1)
    wait(driver, lambda d: d.find_element(By.ID, "prediction").text.startswith(odd + " "), 30)

    # forget (two clicks) and see it gone, from the page and from the predictions
    forget = driver.find_element(By.CSS_SELECTOR, "#classes li[data-name='disc'] .forget")
    forget.click()
    assert forget.text == "really forget?"
    forget.click()
    wait(driver, lambda d: "disc" not in classes_shown(d), 30, "'disc' is still listed")
    served.show(0)
    time.sleep(1.0)
    assert not driver.find_element(By.ID, "prediction").text.startswith("disc")
    assert known(served.state()) == {odd: TEACH, "triangle": TEACH}

    shown = classes_shown(driver)
    driver.refresh()
    wait(driver, lambda d: classes_shown(d) == shown, 30, "the reloaded page shows another state")
    wait(driver, lambda d: d.execute_script(FRAME_HASH), 30, "no frame after the reload")
    served.show(2)
    wait(driver, lambda d: d.find_element(By.ID, "prediction").text.startswith("triangle "), 30)
    time.sleep(1.5)  # a little of the chart
    shot = tmp_path / "web_ui.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10000
    target = os.environ.get("LATENT_REPLAY_WEB_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
