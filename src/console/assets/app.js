// akwatch console: the little the pages need from a script. Loaded from this origin only (the
// Content-Security-Policy allows no inline script). Everything works without it, in UTC.
"use strict";
(function () {
  // Times: the viewer's time zone on the page, UTC on hover.
  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });
  document.querySelectorAll("time[datetime]").forEach(function (t) {
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d.getTime())) {
      t.title = t.textContent;
      t.textContent = fmt.format(d);
    }
  });
  // "Select all" boxes of bulk-action tables.
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    var name = all.getAttribute("data-select-all");
    all.addEventListener("change", function () {
      var form = all.closest("form");
      if (!form) { return; }
      form.querySelectorAll("input[type=checkbox][name='" + name + "']").forEach(function (c) {
        c.checked = all.checked;
      });
    });
  });
})();
