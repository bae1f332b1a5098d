/*
 * CAM Explorer's browser-side operators, each triggered by a Python operator with ctx.trigger(...):
 * - open_url opens a URL in a new tab (FiftyOne 1.22's App has no built-in operator for that, and a
 *   Python operator cannot reach the browser's window): `open_in_cam_explorer`.
 * - set_sidebar_groups shows the dataset's saved sidebar groups now (the "CAM heatmaps" group with
 *   the fields just made): an App that is already open keeps the groups it loaded, even after
 *   reload_dataset, and 1.22 has no built-in operator that sets them: `compute_cams`, and `sync_app`.
 * - Every SYNC_MS while the tab is visible, the page runs the Python operator sync_app, which sends
 *   the saved groups back through set_sidebar_groups only when they changed since the version the
 *   page last saw: a push from another process (the CLI, a batch, a colleague) shows its CAM group
 *   without a tab reload.
 * Hand-written (no build step): it uses the App's globals, as compiled plugins do.
 */
(function () {
  "use strict";
  var fop = window.__foo__; // @fiftyone/operators, exposed by the App for plugins
  var PLUGIN = "@cam-explorer/cam";
  var SYNC_MS = 2000;
  var seen = null; // the version of the saved sidebar groups this page shows (sync_app's)
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
      ctx.state.set(fos.sidebarGroupsDefinition(false), groups);
      ctx.state.set(fos.sidebarGroupsDefinition(true), groups);
    }
  }

  fop.registerOperator(OpenUrl, "@cam-explorer/cam");
  fop.registerOperator(SetSidebarGroups, "@cam-explorer/cam");

  function sync() {
    if (document.hidden || !fop.executeOperator) return;
    // Not found until the App has listed the Python operators: tried again on the next tick.
    Promise.resolve()
      .then(function () { return fop.executeOperator(PLUGIN + "/sync_app", { seen: seen }); })
      .catch(function () {});
  }
  setInterval(sync, SYNC_MS);
})();
