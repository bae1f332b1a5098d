/*
 * CAM Explorer's browser-side operators, each triggered by a Python operator with ctx.trigger(...):
 * - open_url opens a URL in a new tab (FiftyOne 1.22's App has no built-in operator for that, and a
 *   Python operator cannot reach the browser's window): `open_in_cam_explorer`.
 * - set_sidebar_groups shows the dataset's saved sidebar groups now (the "CAM heatmaps" group with
 *   the fields just made): an App that is already open keeps the groups it loaded, even after
 *   reload_dataset, and 1.22 has no built-in operator that sets them: `compute_cams`, and `sync_app`.
 * - Every SYNC_MS while the tab is visible, the page runs sync_page, which runs the Python operator
 *   sync_app; it sends the saved groups back through set_sidebar_groups on the page's first call
 *   and when they changed since the version the page last saw: a push from another process (the
 *   CLI, a batch, a colleague) shows its CAM group without a tab reload. The first call also says
 *   which fields the page's schema holds: a push between the page's load and that call (seconds
 *   on a loaded machine, until the App lists the Python operators) reloads the page's dataset.
 * - Each check also reports the colour scales the page holds without their colours (rgb): a scheme
 *   that comes from a session's state (a notebook's session.view or its reconnect, another tab's
 *   change) has none, and the App draws such a field in its default scale (viridis), not its own
 *   (jet). sync_app answers with set_scale_colours, which fills them in on this page only (the
 *   App's session setter: no mutation, so no other tab is sent a scheme without colours again).
 * - Each check also tells the page of the dataset's queued compute_cams runs as their state changes
 *   (queued, running by quarters, completed, failed): FiftyOne 1.22 shows nothing after Schedule.
 *   sync_app notifies and sends what the page has then been told back through set_runs_told; the
 *   page passes it with its next check.
 * - set_sample_tags shows what record_finding wrote on the open sample (its tags, its cam_findings)
 *   in the modal: the App 1.22 keeps the modal's copy of the sample through reload_samples and
 *   reload_dataset.
 * - refresh_sample_copies reads again, from the page's own server, each sample this page's modal
 *   has shown (the last 20, remembered from the URL's ?id= as it changes) and hands the App the new
 *   copies (its useUpdateSamples): FiftyOne 1.22 keeps the first copy of a sample its modal showed
 *   for the page's life, so a sample opened before its map was written opened again without it.
 *   compute_cams sends it last; sync_app on a change from elsewhere and on a queued run's completion.
 * Hand-written (no build step): it uses the App's globals, as compiled plugins do.
 */
(function () {
  "use strict";
  var fop = window.__foo__; // @fiftyone/operators, exposed by the App for plugins
  var PLUGIN = "@cam-explorer/cam";
  var SYNC_MS = 2000;
  var seen = null; // the version of the saved sidebar groups this page shows (sync_app's)
  var runsTold = null; // queued run id -> what this page was told of it (sync_app's; null: not yet)
  var asked = 0; // when the page last asked sync_app and has had no answer yet (0: none pending)
  var ASK_MS = 30000; // an unanswered ask is asked again after this
  var opened = []; // the samples this page has shown in its modal, newest last (refresh_sample_copies)
  var OPENED_KEPT = 20;
  // The App's own sample query (its mainSampleQuery's fields that hold the sample), asked of the
  // page's own server the way the App's Relay network asks it (fou.getFetchFunction, /graphql)
  var SAMPLE_QUERY = "query camExplorerSampleQuery($dataset: String!, $view: BSONArray!, $filter: SampleFilter!) {" +
    " sample(dataset: $dataset, view: $view, filter: $filter) { __typename" +
    ["ImageSample", "VideoSample", "PointCloudSample", "ThreeDSample", "UnknownSample"].map(function (t) {
      return " ... on " + t + " { id sample }";
    }).join("") + " } }";
  keepLoadsOnTheirOwnCopy(window.__fol__);
  if (!fop || !fop.Operator || !fop.registerOperator) {
    console.error("@cam-explorer/cam: the App exposes no operators API; open_url is unavailable");
    return;
  }

  class OpenUrl extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "open_url", label: "Open a URL in a new tab", unlisted: true });
    }

    async execute(ctx) {
      var url = String((ctx.params && ctx.params.url) || "");
      // Only web pages: never javascript: or file: URLs handed over by a server response.
      if (!/^https?:\/\//i.test(url)) {
        throw new Error("open_url: not an http(s) URL: " + url);
      }
      var opened = window.open(url, "_blank", "noopener");
      if (!opened) {
        // A popup blocker, or noopener (which returns null by design): nothing more to do here;
        // the Python operator's output shows the same URL as a link.
        console.info("@cam-explorer/cam: asked the browser to open " + url);
      }
    }
  }

  class SetSidebarGroups extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "set_sidebar_groups", label: "Show the saved sidebar groups",
                                      unlisted: true });
    }

    async execute(ctx) {
      if (ctx.params && ctx.params.version) seen = String(ctx.params.version);
      var fos = window.__fos__; // @fiftyone/state, exposed by the App for plugins
      if (!fos || !fos.sidebarGroupsDefinition || !ctx.state) {
        console.info("@cam-explorer/cam: this App exposes no sidebar groups; they show on its next load");
        return;
      }
      var groups = ((ctx.params && ctx.params.groups) || []).map(function (g) {
        return { name: String(g.name), paths: (g.paths || []).map(String), expanded: g.expanded !== false };
      });
      if (!groups.length) return;
      // The grid's sidebar (false) and the sample modal's (true): the App derives both from this atom.
      for (var modal of [false, true]) {
        var now = [];
        try {
          now = await ctx.state.snapshot.getPromise(fos.sidebarGroupsDefinition(modal));
        } catch (e) {
          now = [];
        }
        ctx.state.set(fos.sidebarGroupsDefinition(modal), withUnlisted(groups, now || []));
      }
      console.info("@cam-explorer/cam: the sidebar groups set: " + groups.map(function (g) { return g.name; }).join(", "));
    }
  }

  class SetSampleTags extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "set_sample_tags", label: "Show a sample's new tags and findings", unlisted: true });
    }

    useHooks() { // the App's own refresh of one sample (what its tagging menu uses): the modal redraws
      var fos = window.__fos__;
      return { refreshSample: fos && fos.useRefreshSample ? fos.useRefreshSample() : null };
    }

    async execute(ctx) {
      var fos = window.__fos__;
      var id = String((ctx.params && ctx.params.sample_id) || "");
      // the fields record_finding wrote (tags, cam_findings, last_modified_at), as the server sends a sample
      var fields = (ctx.params && ctx.params.fields) || {};
      if (ctx.params && ctx.params.tags) fields = Object.assign({}, fields, { tags: ctx.params.tags.map(String) });
      if (!fos || !fos.modalSample || !fos.isModalActive || !ctx.state || !ctx.hooks.refreshSample) return;
      // Only the sample open in the modal: reload_samples refreshes the grid, not the modal's copy
      if (!(await ctx.state.snapshot.getPromise(fos.isModalActive))) return;
      var open = await ctx.state.snapshot.getPromise(fos.modalSample);
      if (!open || !open.sample || String(open.sample._id) !== id) return;
      // A field new to the page (the first finding makes cam_findings): reload_dataset gave the page
      // its schema, but the App adds a field to the sidebar's groups when it loads, not then (the
      // modal listed "No fields" under labels): put it in the App's default group for its kind.
      for (var modal of [false, true]) {
        var groups = [];
        try {
          groups = (await ctx.state.snapshot.getPromise(fos.sidebarGroupsDefinition(modal))) || [];
        } catch (e) {
          continue;
        }
        var added = withNewFields(groups, fields);
        if (added) ctx.state.set(fos.sidebarGroupsDefinition(modal), added);
      }
      ctx.hooks.refreshSample(Object.assign({}, open.sample, fields));
    }
  }

  class SetScaleColours extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "set_scale_colours", label: "Colour the page's bare colour scales",
                                      unlisted: true });
    }

    useHooks() { // what the App's own event handlers use: sets this page's state, tells no server
      var fos = window.__fos__;
      return { setSession: fos && fos.useSessionSetter ? fos.useSessionSetter() : null };
    }

    async execute(ctx) {
      var fos = window.__fos__;
      if (!fos || !fos.colorScheme || !ctx.state || !ctx.hooks.setSession) return;
      var scheme = await ctx.state.snapshot.getPromise(fos.colorScheme);
      var given = {};
      ((ctx.params && ctx.params.scales) || []).forEach(function (s) { given[String(s.path)] = s; });
      var changed = false;
      var scales = ((scheme && scheme.colorscales) || []).map(function (c) {
        var s = given[c.path];
        // only a scale still bare and still the one the colours were made for
        if (!s || !isBare(c) || scaleKey(c) !== scaleKey(s)) return c;
        changed = true;
        return Object.assign({}, c, { rgb: s.rgb });
      });
      // The App redraws the drawn tiles on this scheme change by itself (test_app21_own_app). No
      // reload_samples on top (its refresher, until 2026-12-06): the two redraws overlapped, and the
      // page then logged "An ImageBitmap is detached" (2-3 times per journey; 0 without), the mark
      // of the grid race that left a tile without its map (keepLoadsOnTheirOwnCopy, below).
      if (changed) ctx.hooks.setSession("colorScheme", Object.assign({}, scheme, { colorscales: scales }));
    }
  }

  function remember(id) {
    if (id) opened = opened.filter(function (o) { return o !== id; }).concat([String(id)]).slice(-OPENED_KEPT);
  }

  // The App (1.22) keeps the sample its modal shows in the URL (?id=): each change of the URL is
  // seen as it happens (reading the modal's state at the 2-s page checks missed a modal opened and
  // closed while a check waited on a busy server)
  function noteUrl() {
    try {
      remember(new URLSearchParams(window.location.search).get("id"));
    } catch (e) {
      // no URL to read: the page checks still read the modal's state
    }
  }
  ["pushState", "replaceState"].forEach(function (name) {
    var original = window.history[name];
    if (typeof original !== "function") return;
    window.history[name] = function () {
      var out = original.apply(this, arguments);
      noteUrl();
      return out;
    };
  });
  window.addEventListener("popstate", noteUrl);
  noteUrl();

  // Remember the sample the modal shows now (before a refresh: an App that keeps no ?id= too)
  async function noteOpened(ctx, fos) {
    try {
      var open = await ctx.state.snapshot.getPromise(fos.modalSelector);
      remember(open && open.id);
    } catch (e) {
      // no modal state in this App: the URL says which samples it opened
    }
  }

  class RefreshSampleCopies extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "refresh_sample_copies", label: "Show new maps on samples this page opened",
                                      unlisted: true });
    }

    useHooks() { // what the App's own tagging uses to put a sample's new state into its caches
      var fos = window.__fos__;
      return { updateSamples: fos && fos.useUpdateSamples ? fos.useUpdateSamples() : null };
    }

    // FiftyOne 1.22 keeps the first copy of each sample its modal showed for as long as the page
    // lives (its modal query is asked once per sample and view): a sample opened before a new map
    // was written opened again with the map's field ticked and the image plain. Ask the page's
    // server for each sample the page has opened and hand the App the new copies.
    async execute(ctx) {
      var fos = window.__fos__;
      var fou = window.__fou__;
      if (!fos || !fou || !fou.getFetchFunction || !ctx.state || !ctx.hooks.updateSamples) return;
      await noteOpened(ctx, fos);
      if (!opened.length) return;
      var dataset = await ctx.state.snapshot.getPromise(fos.datasetName);
      var view = await ctx.state.snapshot.getPromise(fos.view);
      var ask = fou.getFetchFunction();
      var fresh = [];
      for (var id of opened.slice()) {
        try {
          var got = await ask("POST", "/graphql", { query: SAMPLE_QUERY,
                                                    variables: { dataset: dataset, view: view || [], filter: { id: id } } });
          var sample = got && got.data && got.data.sample && got.data.sample.sample;
          if (sample) fresh.push([id, typeof sample === "string" ? JSON.parse(sample) : sample]);
        } catch (e) {
          console.info("@cam-explorer/cam: could not read sample " + id + " again: " + e);
        }
      }
      console.info("@cam-explorer/cam: read again " + fresh.length + " of the " + opened.length +
                   " sample(s) this page opened");
      if (fresh.length) ctx.hooks.updateSamples(fresh);
    }
  }

  class SetRunsTold extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "set_runs_told", label: "Remember what the page was told of queued runs",
                                      unlisted: true });
    }

    async execute(ctx) {
      var runs = ctx.params && ctx.params.runs;
      if (runs && typeof runs === "object") runsTold = runs;
    }
  }

  // A scale named or listed, without the colours the App paints with
  function isBare(c) {
    return !!c && !c.rgb && !!(c.name || (c.list && c.list.length));
  }

  function scaleKey(c) {
    var list = (c.list || []).map(function (i) { return [Number(i.value), String(i.color)]; });
    return JSON.stringify([c.name || null, list]);
  }

  // The page's bare scales, as sync_app reads them
  async function bareScales(ctx, fos) {
    try {
      var scheme = await ctx.state.snapshot.getPromise(fos.colorScheme);
      return ((scheme && scheme.colorscales) || []).filter(isBare).map(function (c) {
        var list = (c.list || []).map(function (i) { return { value: i.value, color: i.color }; });
        return { path: String(c.path), name: c.name || null, list: list.length ? list : null };
      });
    } catch (e) {
      return [];
    }
  }

  // The groups with each label field in `fields` that they do not list added to the App's default
  // group for labels ("labels"); null when none is new. (Tags and primitives the App lists itself.)
  function withNewFields(groups, fields) {
    var listed = new Set();
    groups.forEach(function (g) { (g.paths || []).forEach(function (p) { listed.add(p); }); });
    var out = groups.map(function (g) { return Object.assign({}, g, { paths: (g.paths || []).slice() }); });
    var added = false;
    Object.keys(fields).forEach(function (path) {
      var value = fields[path];
      if (listed.has(path) || !(value && typeof value === "object" && value._cls)) return; // labels only
      var name = "labels";
      var group = out.find(function (g) { return g.name === name; });
      if (!group) out.push(group = { name: name, paths: [], expanded: true });
      group.paths.push(path);
      added = true;
    });
    return added ? out : null;
  }

  // The saved groups, plus every path the page shows that they do not list, kept in its group: the
  // App adds a field missing from the saved groups to a default group when it loads, not when the
  // groups are set, so a field the saved groups leave out would vanish from the sidebar.
  function withUnlisted(groups, now) {
    var listed = new Set();
    groups.forEach(function (g) { g.paths.forEach(function (p) { listed.add(p); }); });
    var out = groups.map(function (g) { return { name: g.name, paths: g.paths.slice(), expanded: g.expanded }; });
    now.forEach(function (g) {
      var keep = (g.paths || []).filter(function (p) { return !listed.has(p); });
      if (!keep.length) return;
      var same = out.find(function (o) { return o.name === g.name; });
      if (same) same.paths = same.paths.concat(keep);
      else out.push({ name: String(g.name), paths: keep.slice(), expanded: g.expanded !== false });
    });
    return out;
  }

  class SyncPage extends fop.Operator {
    get config() {
      return new fop.OperatorConfig({ name: "sync_page", label: "Show what changed since this page loaded",
                                      unlisted: true });
    }

    async execute(ctx) {
      var params = { seen: seen, runs: runsTold };
      var fos = window.__fos__;
      if (seen === null && fos && fos.fullSchema && ctx.state) {
        try { // the page's fields, so sync_app can tell whether the page missed a new one
          params.known = Object.keys(await ctx.state.snapshot.getPromise(fos.fullSchema));
        } catch (e) {
          // not said: sync_app reloads the dataset to be sure
        }
      }
      if (fos && fos.colorScheme && ctx.state) {
        var bare = await bareScales(ctx, fos);
        if (bare.length) params.bare_scales = bare;
      }
      try {
        asked = Date.now();
        // callback: called when sync_app has answered (or failed), its operations queued
        await fop.executeOperator(PLUGIN + "/sync_app", params, { callback: function () { asked = 0; } });
      } catch (e) {
        asked = 0; // not found until the App has listed the Python operators: the next tick asks again
      }
    }
  }

  // FiftyOne 1.22's looker (@fiftyone/looker's AbstractLooker, window.__fol__) redraws a tile on an
  // options change with updateSample(this.sample), which waits 100 ms and then posts the copy it was
  // handed to a worker, handing over that copy's map bitmaps; the worker's answer becomes the
  // looker's new copy. A second options change while a load is out (a colour scheme set, then the
  // server's answer to it; a scheme, then the switched-on fields) hands the wait the copy that load
  // is sending. On a busy page the load's answer can come before that wait ends: the looker then
  // posts a copy whose bitmaps are gone ("DataCloneError: ... An ImageBitmap is detached", from the
  // grid after compute_cams in the App and after a push, issue 21), drops that load, and the tile
  // keeps no map. Such a load posts the looker's own copy instead: the same sample, as the answer
  // left it (a copy with nothing handed over, e.g. a sample read again, is posted as given). Where
  // the own copy's maps are out too (the App's label painting, which it runs beside loads on new
  // fields and colours, took them and gives the looker a new copy when done), the load waits for
  // that copy. And a looker the grid destroyed during that wait (after reload_dataset it makes new
  // ones; destroy closes the maps' bitmaps) posts nothing: its closed bitmaps failed the same way.
  var OUT_WAIT_MS = 100; // a redraw whose looker's maps are all out waits this long, then asks again
  // ... at most this many times (60 s: a whole test suite's load kept a painting out for more than
  // the 5 s this was), then the redraw is dropped: a copy whose maps are out cannot be posted (the
  // worker refuses it: DataCloneError), and the painting's new copy redraws the tile when it comes
  var OUT_WAITS = 600;

  function keepLoadsOnTheirOwnCopy(fol) {
    var proto = fol && fol.AbstractLooker && fol.AbstractLooker.prototype;
    if (!proto || typeof proto.loadSample !== "function" || proto.loadSample.camExplorer) return;
    var load = proto.loadSample;
    var loadOwnCopy = function (sample, transfer) {
      // destroyed (its maps closed: the grid made a new looker for the tile) while its wait ran
      var ended = this.abortController && this.abortController.signal.aborted;
      if (ended || (this.state && this.state.destroyed)) {
        console.info("@cam-explorer/cam: a destroyed tile's redraw is dropped (sample " + sampleId(this.sample) + ")");
        this.isSampleUpdating = false;
        return;
      }
      var own = this.sample;
      if (own && sample && sample !== own && sampleId(sample) === sampleId(own) && handedOver(sample, 0)) {
        console.info("@cam-explorer/cam: a tile's redraw posts its looker's own copy of sample " + sampleId(own));
        sample = own;
      }
      if (own && sample === own && handedOver(own, 0)) {
        // its own copy's maps are out too: with the App's label painting (new fields, new colours),
        // which gives the looker a new copy when it is done. Redraw then.
        if ((this.camExplorerWaits || 0) >= OUT_WAITS) {
          console.info("@cam-explorer/cam: a tile's redraw is dropped, its maps still out (sample " + sampleId(own) + ")");
          this.camExplorerWaits = 0;
          this.isSampleUpdating = false;
          return;
        }
        if (!this.camExplorerWaits) { // once per wait, not at each of its 100-ms asks
          console.info("@cam-explorer/cam: a tile's redraw waits for its maps (sample " + sampleId(own) + ")");
        }
        this.camExplorerWaits = (this.camExplorerWaits || 0) + 1;
        this.isSampleUpdating = false;
        var looker = this;
        setTimeout(function () { looker.updateSample(looker.sample); }, OUT_WAIT_MS);
        return;
      }
      this.camExplorerWaits = 0;
      return load.call(this, sample, transfer);
    };
    loadOwnCopy.camExplorer = true;
    proto.loadSample = loadOwnCopy;
  }

  function sampleId(sample) {
    return sample ? sample.id || sample._id : undefined;
  }

  // Whether a sample's copy holds a bitmap or buffer it handed to a worker (a detached one)
  function handedOver(value, depth) {
    if (!value || typeof value !== "object" || depth > 8) return false;
    if (typeof ImageBitmap !== "undefined" && value instanceof ImageBitmap) return !value.width && !value.height;
    if (value instanceof ArrayBuffer) return value.detached === true;
    if (ArrayBuffer.isView(value)) return value.buffer.detached === true;
    for (var key in value) {
      if (Object.prototype.hasOwnProperty.call(value, key) && handedOver(value[key], depth + 1)) return true;
    }
    return false;
  }

  fop.registerOperator(OpenUrl, "@cam-explorer/cam");
  fop.registerOperator(SetSidebarGroups, "@cam-explorer/cam");
  fop.registerOperator(SyncPage, "@cam-explorer/cam");
  fop.registerOperator(SetSampleTags, "@cam-explorer/cam");
  fop.registerOperator(SetScaleColours, "@cam-explorer/cam");
  fop.registerOperator(SetRunsTold, "@cam-explorer/cam");
  fop.registerOperator(RefreshSampleCopies, "@cam-explorer/cam");

  function sync() {
    if (document.hidden || !fop.executeOperator) return;
    if (asked && Date.now() - asked < ASK_MS) return; // the last ask is still on its way
    Promise.resolve()
      .then(function () { return fop.executeOperator(PLUGIN + "/sync_page", {}); })
      .catch(function () {});
  }
  setInterval(sync, SYNC_MS);
})();
