"""The OHIF viewer's built app, from the npm package ``@ohif/app`` (folder ``dist/``), fetched once
with ``npm pack`` and kept in a cache folder; and the ``app-config.js`` that points it at a DICOMweb
server on the same origin.

The cache folder is ``$DICOM_NODE_OHIF_CACHE``, else ``~/.cache/dicom-node/ohif``; each version
has its own sub-folder, written to a temporary name and renamed when complete, so an interrupted
fetch leaves nothing half-done behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

OHIF_PACKAGE = "@ohif/app"
# The version the browser test runs against (tests/viewer); another one may name things differently.
OHIF_VERSION = "3.13.2"
CACHE_ENV = "DICOM_NODE_OHIF_CACHE"
# Where Orthanc's DICOMweb API is, seen from the browser (the proxy passes it on).
DICOMWEB_PATH = "/dicom-web"


def cache_root() -> Path:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else Path.home() / ".cache" / "dicom-node" / "ohif"


def ohif_dist(version: str = OHIF_VERSION, *, cache: Path | None = None, fetch: bool = True) -> Path:
    """The ``dist`` folder of ``@ohif/app@version``, fetched with npm into the cache if missing.

    Raises RuntimeError naming what is missing (npm, the package) when it cannot be had."""
    root = cache or cache_root()
    dist = root / version / "dist"
    if (dist / "index.html").is_file():
        return dist
    if not fetch:
        raise RuntimeError(f"OHIF {version} is not in {root}: run `dicom-node viewer --fetch-only` (needs npm)")
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: it fetches the OHIF viewer (Debian package npm)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{OHIF_PACKAGE}@{version}", "--silent", "--pack-destination", tmp],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(
                f"npm pack {OHIF_PACKAGE}@{version} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
            tar.extractall(unpacked, members=members, filter="data")
        if not (unpacked / "package" / "dist" / "index.html").is_file():
            raise RuntimeError(f"{OHIF_PACKAGE}@{version} has no dist/index.html: not the built viewer")
        target = root / version
        staged = Path(tmp) / "staged"
        staged.mkdir()
        (unpacked / "package" / "dist").rename(staged / "dist")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return dist


# OHIF 3.13's Parametric Map viewport writes its colour map and window (rainbow_2, W 100 / L 50) into
# the display-set options of the viewport it opens in, and the viewport grid hands a viewport's
# options on to the next series opened there without options of its own: after the map, the SC
# opened at W 100 / L 50 (washed out) and the CT under a SEG in rainbow colours. This gives every
# series opened without options fresh ones, one per display set (the map's viewport still sets its
# own). tests/viewer checks the CT's and the SC's window after the map.
# And OHIF shows no colour legend for a map: a viewport showing one gets OHIF's own colour bar (the
# map's colour map over its window, the score in % as OHIF multiplies it by 100), removed when the
# viewport shows something else. OHIF's bar draws nothing without the colour maps to choose from
# (its customization 'cornerstone.colorbar'), and is grey unless told the map's colour map (the map's
# layer may not have it yet when a layout change draws the viewport again): it gets both.
OWN_DISPLAY_OPTIONS_JS = """(function ownDisplayOptions() {
  const s = window.services;
  const grid = s && s.viewportGridService;
  if (!grid || !s.cornerstoneViewportService || !s.colorbarService) { setTimeout(ownDisplayOptions, 50); return; }
  if (grid.dicomNodeOwnOptions) return;
  grid.dicomNodeOwnOptions = true;
  const viewports = s.cornerstoneViewportService;
  viewports.subscribe(viewports.EVENTS.VIEWPORT_DATA_CHANGED, ({viewportData, viewportId}) => {
    const uids = [].concat((viewportData && viewportData.data) || []).map(d => d && d.displaySetInstanceUID);
    const map = uids.filter(Boolean).map(uid => s.displaySetService.getDisplaySetByUID(uid))
      .find(d => d && d.Modality === 'PMAP');
    if (!map) {
      if (s.colorbarService.hasColorbar(viewportId)) s.colorbarService.removeColorbar(viewportId);
      return;
    }
    let tries = 0;
    (function legend() {
      const shown = s.viewportGridService.getDisplaySetsUIDsForViewport(viewportId) || [];
      if (!shown.includes(map.displaySetInstanceUID)) return;  // another series came since
      const vp = viewports.getCornerstoneViewport(viewportId);
      const props = a => { try { return vp.getProperties(a.referencedId || a.uid) || {}; } catch (e) { return {}; } };
      const coloured = vp && vp.getActors ? vp.getActors().map(props).map(p => p.colormap && p.colormap.name)
        .find(n => n && n !== 'Grayscale') : null;
      if (!coloured) {
        if (++tries < 240) setTimeout(legend, 250);
        return;
      }
      const colormaps = {};
      const bar = s.customizationService.getCustomization('cornerstone.colorbar') || {};
      Object.values(bar.colormaps || {}).forEach(c => { colormaps[c.Name || c.name] = c; });
      if (!colormaps[coloured]) { console.warn('dicom-node: OHIF has no colour bar for', coloured); return; }
      const options = {colormaps, activeColormapName: coloured};
      try { s.colorbarService.addColorbar(viewportId, [map.displaySetInstanceUID], options); }
      catch (e) { console.warn('dicom-node: no colour bar for the map', e); }
    })();
  });
  const set = grid.setDisplaySetsForViewports.bind(grid);
  grid.setDisplaySetsForViewports = (viewports, ...rest) => set((viewports || []).map(v =>
    v && v.displaySetInstanceUIDs && !(v.displaySetOptions && v.displaySetOptions.length)
      ? Object.assign({}, v, {displaySetOptions: v.displaySetInstanceUIDs.map(() => ({}))}) : v), ...rest);
})();
"""


# OHIF 3.13 opens a series at its first image (for a CT sorted head first: above the lungs) unless
# the URL names an image (initialSOPInstanceUID, the node's "open in viewer" link). Its default
# hanging protocol asks the custom attribute ``sopInstanceLocation`` where to open; this one answers
# as OHIF's does when the URL names an image, and otherwise with the first image the study's Key
# Object Selection references in that series (the node's strongest key slice), so that a study
# opened from the study list shows the CT at the first finding too.
KEY_SLICE_JS = """(function openAtKeySlice() {
  const s = window.services;
  const hp = s && s.hangingProtocolService;
  if (!hp || !s.displaySetService || !hp.customAttributeRetrievalCallbacks) { setTimeout(openAtKeySlice, 50); return; }
  if (hp.dicomNodeKeySlice) return;
  hp.dicomNodeKeySlice = true;
  const fromUrl = hp.customAttributeRetrievalCallbacks.sopInstanceLocation;
  const keySops = study => {
    const sops = [];
    const items = list => (list || []).forEach(item => {
      if (item.ValueType === 'IMAGE') {
        (item.ReferencedSOPSequence || []).forEach(r => sops.push(r.ReferencedSOPInstanceUID));
      }
      items(item.ContentSequence);
    });
    s.displaySetService.getActiveDisplaySets()
      .filter(d => d.StudyInstanceUID === study && d.SOPClassUID === '1.2.840.10008.5.1.4.1.1.88.59')
      .forEach(d => (d.instances || []).forEach(i => items(i.ContentSequence)));
    return sops;
  };
  hp.addCustomAttribute('sopInstanceLocation', 'The image to open at', function (displaySets) {
    const given = fromUrl ? fromUrl.callback.call(this, displaySets) : undefined;
    const ds = displaySets && displaySets[0];
    if (given !== undefined || !ds || !ds.instances) return given;
    for (const sop of keySops(ds.StudyInstanceUID)) {
      const index = ds.instances.findIndex(i => i.SOPInstanceUID === sop);
      if (index >= 0) return {index};
    }
    return undefined;
  });
})();
"""


# OHIF's toasts (a fixed layer at z-index 999999999, bottom right) cover the colour bar where they
# meet it: the Parametric Map viewport's own notice ("values multiplied by 100") slides in over the
# bar's right end each time the map is drawn in a wide viewport. The bar's corner of the viewport
# (the one ancestor that makes a stacking context, by its translate) goes above them.
COLOUR_BAR_ON_TOP_JS = """(function colourBarOnTop() {
  const style = document.createElement('style');
  style.textContent = '[class*="translate"]:has([id^="colorbar-container-"]) { z-index: 2147483647; }';
  (document.head || document.documentElement).appendChild(style);
})();
"""


def app_config(*, name: str = "COVID-CT node results", dicomweb_path: str = DICOMWEB_PATH) -> str:
    """The viewer's ``app-config.js``: one DICOMweb data source at ``dicomweb_path`` on the page's
    own origin (the proxy passes it on to Orthanc), the study list on, nothing fetched elsewhere."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": name,
            "name": "orthanc",
            "qidoRoot": dicomweb_path,
            "wadoRoot": dicomweb_path,
            "wadoUriRoot": dicomweb_path,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    # The viewer's guided tour would cover the images on every first visit: mark it as seen.
    skip_tour = "try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}\n"
    return (
        "/** Written by dicom-node (dicom_node/viewer/ohif.py). */\n"
        + skip_tour
        + OWN_DISPLAY_OPTIONS_JS
        + KEY_SLICE_JS
        + COLOUR_BAR_ON_TOP_JS
        + "window.config = "
        + json.dumps(config, indent=2)
        + ";\n"
    )
