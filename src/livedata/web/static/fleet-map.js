// The fleet page's map: Leaflet (vendored from npm, see scripts/build_web.py) with one
// marker per machine (a coloured dot and its chassis id; a popup with name, status, last
// seen and position) and a short trail behind it.
//
// Tiles are optional: only when the server names a tile URL template (setting
// `map_tiles`) is a tile layer added. Under the tiles lies a plain background with a
// latitude/longitude graticule and a metric scale, so the positions read the same with no
// tile server configured or none reachable (a failed tile leaves its square transparent).
// The view fits the machines until the user pans or zooms; "Fit" brings that back.

import { h } from './dom.js';

const { L } = globalThis; // classic <script defer> in fleet.html

const FIT_PADDING_TOP_LEFT = [28, 40]; // clear of the lat labels and the note
const FIT_PADDING_BOTTOM_RIGHT = [104, 36]; // room for the easternmost label, the scale
const FIT_MAX_ZOOM = 16;
const LAT_SPACING = 50; // px between graticule lines at least
const LNG_SPACING = 80; // wider: the labels run along
const STEPS = [];
for (let e = -6; e <= 1; e += 1) for (const m of [1, 2, 2.5, 5]) STEPS.push(Number((m * 10 ** e).toPrecision(2)));
STEPS.push(30, 45, 90);
STEPS.sort((a, b) => a - b);

/** The graticule's step in degrees: the smallest round one at least `minStep`. */
function niceStep(minStep) {
  return STEPS.find((s) => s >= minStep) ?? 90;
}

function decimals(step) {
  let d = 0;
  while (d < 8 && Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) > 1e-9) d += 1;
  return d;
}

function degrees(value, step, pos, neg) {
  const text = Math.abs(value).toFixed(decimals(step));
  return `${text}° ${value < 0 ? neg : pos}`;
}

export class FleetMap {
  /**
   * @param {HTMLElement} el  the map's container
   * @param {(item: object) => Node} popupContent  the popup of one machine
   */
  constructor(el, popupContent) {
    this.el = el;
    this.popupContent = popupContent;
    this.markers = new Map(); // chassis -> {marker, trail, item}
    this.tiles = null;
    this.tileFailures = 0;
    this.auto = true; // fit the machines until the user moves the map
    this.fitting = false;
    this.fitted = '';
    this.popupOpen = false; // no refit under an open popup: it was panned into view
    this.map = L.map(el, {
      minZoom: 2,
      maxZoom: 19,
      zoomSnap: 0.25,
      worldCopyJump: true,
      attributionControl: false,
      zoomControl: false,
    }).setView([20, 0], 2);
    L.control.zoom({ position: 'topright' }).addTo(this.map);
    L.control.scale({ imperial: false, position: 'bottomleft', maxWidth: 120 }).addTo(this.map);
    this.attribution = L.control.attribution({ prefix: false, position: 'bottomright' });
    this.addFitControl();

    this.grid = h('div', { class: 'graticule', 'aria-hidden': 'true' });
    el.prepend(this.grid); // below the map pane: covered where tiles load, visible elsewhere
    this.empty = h('div', { class: 'map-empty', hidden: true }, 'No GPS positions yet');
    el.append(this.empty);
    this.note = h('div', { class: 'map-note', hidden: true, role: 'status' });
    el.append(this.note);

    this.map.on('move resize', () => this.drawGrid());
    this.map.on('zoomstart', () => this.grid.classList.add('zooming'));
    this.map.on('zoomend', () => {
      this.grid.classList.remove('zooming');
      this.drawGrid();
    });
    this.map.on('dragstart', () => { this.auto = false; });
    this.map.on('popupopen', () => { this.popupOpen = true; });
    this.map.on('popupclose', () => { this.popupOpen = false; });
    this.map.on('zoomstart', () => { if (!this.fitting) this.auto = false; });
    new ResizeObserver(() => {
      this.map.invalidateSize({ pan: false });
      if (this.auto) this.fit(true);
      this.drawGrid();
    }).observe(el);
    this.drawGrid();
  }

  addFitControl() {
    const Fit = L.Control.extend({
      options: { position: 'topright' },
      onAdd: () => {
        const button = h('button', {
          type: 'button', class: 'map-fit', title: 'Show all machines', 'aria-label': 'Show all machines',
        }, 'Fit');
        L.DomEvent.disableClickPropagation(button);
        button.addEventListener('click', () => {
          this.auto = true;
          this.fit(true);
        });
        return h('div', { class: 'leaflet-bar' }, button);
      },
    });
    new Fit().addTo(this.map);
  }

  /** Use a tile server ({tiles: URL template, attribution}); "" = none. */
  setTiles({ tiles = '', attribution = '' } = {}) {
    if (this.tiles && this.tiles._url === tiles) return;
    if (this.tiles) {
      this.tiles.remove();
      this.tiles = null;
      this.attribution.remove();
    }
    this.el.dataset.tiles = tiles ? 'configured' : 'none';
    this.tileFailures = 0;
    this.note.hidden = true;
    if (!tiles) return;
    this.tiles = L.tileLayer(tiles, { maxZoom: 19, attribution, crossOrigin: false });
    this.tiles.on('tileerror', () => {
      this.tileFailures += 1;
      this.el.dataset.tiles = 'failing';
      this.note.textContent = 'Map tiles unavailable';
      this.note.title = `Cannot load tiles from ${tiles}: the positions are drawn on a plain grid`;
      this.note.hidden = false;
    });
    this.tiles.on('tileload', () => {
      if (this.el.dataset.tiles === 'failing') return; // one failed tile is enough to say so
      this.el.dataset.tiles = 'loaded';
    });
    this.tiles.addTo(this.map);
    if (attribution) this.attribution.addTo(this.map);
  }

  /**
   * Show these machines: [{chassis, name, model, online, lastSeen, lat, lng, color,
   * status, severity, trail: [[lat, lng], …], trailColor}]; machines not listed are removed.
   */
  update(items) {
    const seen = new Set();
    for (const item of items) {
      seen.add(item.chassis);
      let entry = this.markers.get(item.chassis);
      if (!entry) {
        const icon = L.divIcon({
          className: 'machine-marker',
          html: '<span class="pin"></span><span class="pin-label"></span>',
          iconSize: [18, 18],
          iconAnchor: [9, 9],
          popupAnchor: [0, -10],
        });
        const trail = L.polyline([], {
          color: item.trailColor, weight: 3, opacity: 0.55, lineCap: 'round', lineJoin: 'round', interactive: false,
        }).addTo(this.map);
        const marker = L.marker([item.lat, item.lng], { icon, keyboard: true, title: item.chassis, riseOnHover: true })
          .bindPopup(() => this.popupContent(entry.item), {
            className: 'machine-popup', minWidth: 180, autoPanPaddingTopLeft: [12, 12], autoPanPaddingBottomRight: [56, 12],
          })
          .addTo(this.map);
        entry = { marker, trail, item };
        this.markers.set(item.chassis, entry);
      }
      entry.item = item;
      entry.marker.setLatLng([item.lat, item.lng]);
      entry.trail.setLatLngs(item.trail);
      const el = entry.marker.getElement();
      if (el) {
        el.dataset.chassis = item.chassis;
        el.dataset.status = item.status;
        el.dataset.severity = item.severity ?? '';
        el.style.setProperty('--pin', item.color);
        el.querySelector('.pin-label').textContent = item.chassis;
        el.setAttribute('aria-label', `${item.chassis}: ${item.severity ? `${item.severity} alert, ` : ''}${item.status}`);
      }
      const popup = entry.marker.getPopup();
      if (popup?.isOpen()) popup.setContent(this.popupContent(item));
    }
    for (const [chassis, entry] of this.markers) {
      if (seen.has(chassis)) continue;
      entry.marker.remove();
      entry.trail.remove();
      this.markers.delete(chassis);
    }
    this.empty.hidden = items.length > 0;
    if (this.auto) this.fit(false);
  }

  bounds() {
    const points = [...this.markers.values()].flatMap((e) => [[e.item.lat, e.item.lng], ...e.item.trail]);
    return points.length ? L.latLngBounds(points) : null;
  }

  /** Fit the view to the machines and their trails; unless `force`, only when they changed or left it. */
  fit(force) {
    const bounds = this.bounds();
    if (!bounds || !this.map.getSize().x) return;
    const key = [...this.markers.keys()].sort().join(',');
    const view = this.map.getBounds().pad(-0.04);
    if (!force && (this.popupOpen || (key === this.fitted && view.contains(bounds)))) return;
    this.fitted = key;
    this.fitting = true;
    try {
      this.map.fitBounds(bounds, {
        paddingTopLeft: FIT_PADDING_TOP_LEFT,
        paddingBottomRight: FIT_PADDING_BOTTOM_RIGHT,
        maxZoom: FIT_MAX_ZOOM,
        animate: false,
      });
    } finally {
      this.fitting = false;
    }
  }

  /** Latitude and longitude lines with their labels, at a step that suits the view. */
  drawGrid() {
    const size = this.map.getSize();
    if (!size.x || !size.y) return;
    const b = this.map.getBounds();
    const south = Math.max(-85, b.getSouth());
    const north = Math.min(85, b.getNorth());
    const west = b.getWest();
    const east = b.getEast();
    const lines = [];
    const labels = [];
    const stepLat = niceStep(((north - south) * LAT_SPACING) / size.y);
    for (let lat = Math.ceil(south / stepLat) * stepLat; lat <= north; lat += stepLat) {
      const y = this.map.latLngToContainerPoint([lat, west]).y;
      if (y < 0 || y > size.y) continue;
      lines.push(h('div', { class: 'grid-line lat', style: `top:${y.toFixed(1)}px` }));
      if (y > 44 && y < size.y - 30) { // clear of the note above and the scale below
        labels.push(h('span', { class: 'grid-label lat', style: `top:${y.toFixed(1)}px` }, degrees(lat, stepLat, 'N', 'S')));
      }
    }
    const stepLng = niceStep(((east - west) * LNG_SPACING) / size.x);
    const midLat = (south + north) / 2;
    const scale = this.el.querySelector('.leaflet-control-scale')?.offsetWidth ?? 0;
    const attribution = this.el.querySelector('.leaflet-control-attribution')?.offsetWidth ?? 0;
    for (let lng = Math.ceil(west / stepLng) * stepLng; lng <= east; lng += stepLng) {
      const x = this.map.latLngToContainerPoint([midLat, lng]).x;
      if (x < 0 || x > size.x) continue;
      lines.push(h('div', { class: 'grid-line lng', style: `left:${x.toFixed(1)}px` }));
      const wrapped = ((((lng + 180) % 360) + 360) % 360) - 180;
      if (x > scale + 16 && x < size.x - attribution - 68) { // clear of the scale and the attribution
        labels.push(h('span', { class: 'grid-label lng', style: `left:${x.toFixed(1)}px` }, degrees(wrapped, stepLng, 'E', 'W')));
      }
    }
    this.grid.replaceChildren(...lines, ...labels);
  }
}
