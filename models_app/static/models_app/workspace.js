/* A model's dataset workspace (templates/admin/models_app/model/change_form.html and its includes).

   One save model: everything here saves itself (a caption as you leave it, the caption tools at once,
   the pairs when a pair is complete or an instruction is left); the form below the workspace keeps a
   single "Save settings" button for its own fields. The page polls the model's state
   (admin_console.workspace_state) and applies it: while a training is queued or running the whole page
   is read-only under a banner that links the training, and editing comes back when it ends, without a
   reload. Every write answers the new state too, so flags and counts follow at once. */
(function () {
  "use strict";
  const ws = document.getElementById("workspace");
  if (!ws) return;
  const $ = id => document.getElementById(id);
  const csrf = ws.querySelector("[name=csrfmiddlewaretoken]").value;
  const grid = $("grid");
  let state = JSON.parse($("workspace-state").textContent);

  // --- talking to the server ------------------------------------------------------------------------
  async function post(url, data) {
    const body = data instanceof FormData ? data : new URLSearchParams(data || {});
    const response = await fetch(url, {method: "POST", body, headers: {"X-CSRFToken": csrf}, credentials: "same-origin"});
    const payload = await response.json().catch(() => ({detail: response.statusText}));
    if (!response.ok) throw new Error(payload.detail || response.statusText);
    return payload;
  }
  const saveStatus = $("ws-save-status");
  function saving(text, failed) {
    saveStatus.textContent = text;
    saveStatus.classList.toggle("failed", Boolean(failed));
  }
  async function write(url, data, onDone) {
    saving("Saving…");
    try {
      const answer = await post(url, data);
      saving("All changes saved");
      if (onDone) onDone(answer);
      if (answer.state) apply(answer.state);
      return answer;
    } catch (error) {
      saving("Not saved: " + error.message, true);
      throw error;
    }
  }
  function showError(id, error) { $(id).textContent = error ? error.message : ""; }

  // --- the cards --------------------------------------------------------------------------------------
  const cards = () => [...grid.querySelectorAll(".ws-card")];
  const cardOf = pk => grid.querySelector(`.ws-card[data-pk="${pk}"]`);
  function setFlags(card, problems) {
    const flags = card.querySelector(".flags");
    flags.replaceChildren(...problems.map(text => {
      const flag = document.createElement("span");
      flag.className = "ws-flag";
      flag.textContent = text;
      return flag;
    }));
  }
  cards().forEach(card => {
    const caption = card.querySelector(".caption"), saved = card.querySelector(".ws-saved");
    caption.addEventListener("input", () => { caption.dataset.dirty = "1"; saved.textContent = ""; });
    caption.addEventListener("change", async () => {
      saved.classList.remove("failed");
      try {
        await write(card.dataset.caption, {description: caption.value}, answer => {
          delete caption.dataset.dirty;
          if (document.activeElement !== caption) caption.value = answer.description;
          const image = state.images.find(i => String(i.pk) === card.dataset.pk);
          if (image) { image.description = answer.description; image.problems = answer.problems; }
          setFlags(card, answer.problems);  // "no caption" goes once one is saved
          saved.textContent = "saved";
        });
      } catch (error) {
        saved.textContent = error.message;
        saved.classList.add("failed");
      }
    });
    card.querySelector(".delete").addEventListener("click", async event => {
      event.preventDefault();
      if (!window.confirm("Delete this image from the dataset?")) return;
      try { await write(card.dataset.delete); location.reload(); } catch (error) { saved.textContent = error.message; }
    });
    card.querySelector(".replace").addEventListener("change", async event => {
      const form = new FormData();
      form.append("image", event.target.files[0]);
      try { await write(card.dataset.replace, form); location.reload(); } catch (error) { saved.textContent = error.message; }
    });
    card.querySelector(".ws-thumb").addEventListener("click", () => openLightbox(cards().indexOf(card)));
  });

  // --- upload -----------------------------------------------------------------------------------------
  const drop = $("drop"), input = $("upload-input");
  async function upload(files) {
    if (state.locked) return;
    const form = new FormData();
    for (const file of files) form.append("images", file);
    try { await write(ws.dataset.upload, form); location.reload(); } catch (error) { showError("upload-error", error); }
  }
  input.addEventListener("change", () => input.files.length && upload(input.files));
  ["dragenter", "dragover"].forEach(name => drop.addEventListener(name, event => {
    event.preventDefault();
    if (!state.locked) drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach(name => drop.addEventListener(name, event => { event.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", event => event.dataTransfer.files.length && upload(event.dataTransfer.files));

  // --- the caption tools ------------------------------------------------------------------------------
  $("add-trigger").addEventListener("click", async () => {
    showError("tools-error");
    try {
      await write(ws.dataset.trigger, {}, answer => { $("trigger-result").textContent = `added to ${answer.changed} caption(s)`; });
    } catch (error) { showError("tools-error", error); }
  });
  const find = $("find-text"), replace = $("replace-text"), result = $("replace-result");
  let preview = null;  // {find, replace, changed}: what the Replace button would do
  function forgetPreview() {
    preview = null;
    result.textContent = "exact text, case included; Preview counts the captions it would change first";
    $("replace-apply").textContent = "Replace";
    render();
  }
  find.addEventListener("input", forgetPreview);
  replace.addEventListener("input", forgetPreview);
  $("replace-preview").addEventListener("click", async () => {
    showError("tools-error");
    const asked = {find: find.value, replace: replace.value};
    try {
      const answer = await post(ws.dataset.replace, {...asked, preview: "1"});
      preview = {...asked, changed: answer.changed};
      result.textContent = answer.changed
        ? `${answer.occurrences} occurrence(s) in ${answer.changed} caption(s) would change`
        : "no caption holds this text";
      $("replace-apply").textContent = `Replace in ${answer.changed} caption(s)`;
    } catch (error) { showError("tools-error", error); }
    render();
  });
  $("replace-apply").addEventListener("click", async () => {
    if (!preview) return;
    showError("tools-error");
    try {
      await write(ws.dataset.replace, {find: preview.find, replace: preview.replace, expected: preview.changed}, answer => {
        preview = null;
        result.textContent = `replaced in ${answer.changed} caption(s)`;
        $("replace-apply").textContent = "Replace";
      });
    } catch (error) { showError("tools-error", error); }
    render();
  });
  let autocaptionWaiting = false;
  $("autocaption").addEventListener("click", async () => {
    showError("tools-error");
    try {
      const answer = await write(ws.dataset.autocaption);
      autocaptionWaiting = true;
      $("autocaption-progress").textContent = `queued for ${answer.queued} image(s): the captions appear here as the worker writes them`;
    } catch (error) { showError("tools-error", error); }
  });

  // --- the lightbox -----------------------------------------------------------------------------------
  const lightbox = $("lightbox"), big = $("lightbox-image");
  let shown = -1, opener = null;
  function showImage(index) {
    const count = state.images.length;
    if (!count) return;
    shown = (index + count) % count;
    const image = state.images[shown], card = cardOf(image.pk);
    const [width, height] = [Number(image.width), Number(image.height)];
    // As large as the window allows: a small image up to four times its size, a large one scaled down.
    const scale = Math.min(4, (0.9 * window.innerWidth) / width, (0.78 * window.innerHeight) / height);
    big.style.width = `${Math.round(width * scale)}px`;
    big.style.height = `${Math.round(height * scale)}px`;
    big.alt = image.name;
    big.src = image.thumbnail;  // at once, then the original once it has loaded
    const original = new Image();
    original.onload = () => { if (state.images[shown] === image) big.src = image.full; };
    original.src = image.full;
    $("lightbox-name").textContent = image.name;
    $("lightbox-position").textContent = `${shown + 1} / ${count}`;
    const caption = card ? card.querySelector(".caption").value : image.description;
    $("lightbox-caption").textContent = caption || "(no caption)";
  }
  function openLightbox(index) {
    opener = document.activeElement;
    lightbox.hidden = false;
    document.body.classList.add("ws-lightbox-open");
    showImage(index);
    $("lightbox-close").focus();
  }
  function closeLightbox() {
    lightbox.hidden = true;
    document.body.classList.remove("ws-lightbox-open");
    big.removeAttribute("src");
    if (opener) opener.focus();
  }
  $("lightbox-close").addEventListener("click", closeLightbox);
  $("lightbox-prev").addEventListener("click", () => showImage(shown - 1));
  $("lightbox-next").addEventListener("click", () => showImage(shown + 1));
  lightbox.addEventListener("click", event => { if (event.target === lightbox) closeLightbox(); });
  document.addEventListener("keydown", event => {
    if (lightbox.hidden) return;
    if (event.key === "Escape") closeLightbox();
    else if (event.key === "ArrowRight") showImage(shown + 1);
    else if (event.key === "ArrowLeft") showImage(shown - 1);
    else return;
    event.preventDefault();
  });

  // --- the pairs editor (edit models) -----------------------------------------------------------------
  const pairsBox = $("pairs");
  let pairs = state.pairs.map(pair => ({...pair}));  // what the editor shows; incomplete ones are drafts
  let picking = null;  // {pair, side} while the picker is open
  const complete = pair => pair.source_id && pair.target_id;
  const imageById = id => state.images.find(image => image.id === id);
  function renderPairs() {
    if (!pairsBox) return;
    const template = $("pair-row");
    pairsBox.replaceChildren(...pairs.map(pair => {
      const row = template.content.firstElementChild.cloneNode(true);
      row.querySelectorAll(".pair-slot").forEach(slot => {
        const side = slot.dataset.side, image = imageById(pair[`${side}_id`]);
        const picture = slot.querySelector("img"), label = slot.querySelector(".slot-label");
        picture.hidden = !image;
        if (image) { picture.src = image.thumbnail; picture.alt = image.name; }
        label.textContent = image ? `${side}: ${image.name}` : `${side}: choose`;
        slot.setAttribute("aria-label", image ? `${side} ${image.name}, click to choose another` : `choose the ${side}`);
        slot.addEventListener("click", () => openPicker(pair, side));
      });
      const extras = row.querySelector(".pair-extras");
      extras.replaceChildren(...(pair.extra_source_ids || []).map(id => {
        const image = imageById(id), button = document.createElement("button");
        button.type = "button";
        button.className = "pair-extra";
        button.setAttribute("aria-label", `source ${image ? image.name : id}, click to remove it`);
        if (image) { const picture = document.createElement("img"); picture.src = image.thumbnail; picture.alt = image.name; button.append(picture); }
        button.addEventListener("click", () => {
          if (state.locked) return;
          pair.extra_source_ids = pair.extra_source_ids.filter(other => other !== id);
          complete(pair) ? savePairs() : renderPairs();
        });
        return button;
      }));
      row.querySelector(".add-source").addEventListener("click", () => openPicker(pair, "extra"));
      const instruction = row.querySelector(".pair-instruction");
      instruction.value = pair.instruction || "";
      instruction.readOnly = state.locked;
      row.querySelector(".pair-flag").hidden = Boolean((pair.instruction || "").trim()) || !complete(pair);
      instruction.addEventListener("input", () => { pair.instruction = instruction.value; });
      instruction.addEventListener("change", () => { pair.instruction = instruction.value; savePairs(); });
      row.querySelector(".remove-pair").addEventListener("click", event => {
        event.preventDefault();
        if (state.locked) return;
        pairs = pairs.filter(other => other !== pair);
        complete(pair) ? savePairs() : renderPairs();
      });
      row.classList.toggle("draft", !complete(pair));
      return row;
    }));
    render();
  }
  async function savePairs() {
    showError("pairs-error");
    const drafts = pairs.filter(pair => !complete(pair));
    const body = pairs.filter(complete).map(({source_id, target_id, instruction, extra_source_ids}) => ({source_id, target_id, instruction: instruction || "", extra_source_ids: extra_source_ids || []}));
    try {
      await write(ws.dataset.pairs, {pairs: JSON.stringify(body)}, answer => {
        state.pairs = answer.pairs;
        pairs = [...answer.pairs.map(pair => ({...pair})), ...drafts];
      });
    } catch (error) { showError("pairs-error", error); }
    renderPairs();
  }
  const picker = $("pair-picker");
  function openPicker(pair, side) {
    if (state.locked) return;
    picking = {pair, side};
    $("picker-side").textContent = side === "extra" ? "further source" : side;
    const taken = [pair.source_id, pair.target_id, ...(pair.extra_source_ids || [])];
    picker.querySelectorAll(".picker-item").forEach(item => {
      item.classList.toggle("chosen", side !== "extra" && item.dataset.id === pair[`${side}_id`]);
      // never an image the pair already holds in another place
      item.disabled = side === "extra" ? taken.includes(item.dataset.id) : taken.filter(id => id !== pair[`${side}_id`]).includes(item.dataset.id);
    });
    picker.hidden = false;
    const first = picker.querySelector(".picker-item:not(:disabled)");
    if (first) first.focus();
  }
  function closePicker() { picker.hidden = true; picking = null; }
  if (picker) {
    picker.querySelectorAll(".picker-item").forEach(item => item.addEventListener("click", () => {
      if (!picking) return;
      const {pair, side} = picking;
      if (side === "extra") pair.extra_source_ids = [...(pair.extra_source_ids || []), item.dataset.id];
      else pair[`${side}_id`] = item.dataset.id;
      closePicker();
      if (complete(pair)) savePairs();
      else if (side === "extra") renderPairs();
      else { renderPairs(); openPicker(pair, side === "source" ? "target" : "source"); }
    }));
    $("picker-cancel").addEventListener("click", closePicker);
    picker.addEventListener("keydown", event => { if (event.key === "Escape") closePicker(); });
    $("add-pair").addEventListener("click", () => {
      const pair = {source_id: null, target_id: null, instruction: "", extra_source_ids: []};
      pairs.push(pair);
      renderPairs();
      openPicker(pair, "source");
    });
  }

  // --- training controls ------------------------------------------------------------------------------
  $("start-training").addEventListener("click", async () => {
    try { const answer = await post(ws.dataset.start); location.href = answer.url; } catch (error) { showError("training-error", error); }
  });
  $("cancel-training").addEventListener("click", async () => {
    if (!window.confirm("Cancel this training? It stops at its next step; this cannot be undone.")) return;
    try { await post(ws.dataset.cancel); showError("training-error"); poll(true); } catch (error) { showError("training-error", error); }
  });

  // --- applying the state -----------------------------------------------------------------------------
  const settingsForm = document.getElementById("model_form");
  function lockSettings(locked) {
    // The form below saves through model_update, which a queued or running training refuses: its
    // fields follow the lock, and come back as they were.
    if (!settingsForm) return;
    settingsForm.querySelectorAll("input, select, textarea, button").forEach(field => {
      if (field.type === "hidden") return;
      if (locked && !field.disabled) { field.disabled = true; field.dataset.wsLocked = "1"; }
      else if (!locked && field.dataset.wsLocked) { field.disabled = false; delete field.dataset.wsLocked; }
    });
    const note = $("save-settings-note");
    if (note) {
      note.dataset.text = note.dataset.text || note.textContent;
      note.textContent = locked ? "Read-only while a training is queued or running." : note.dataset.text;
    }
  }
  function render() {
    // Every control's enabled state, from the state and what is being edited.
    const locked = state.locked, tools = state.captions;
    ws.classList.toggle("ws-locked", locked);
    input.disabled = locked;
    grid.querySelectorAll(".caption").forEach(caption => { caption.readOnly = locked; });
    grid.querySelectorAll(".replace").forEach(field => { field.disabled = locked; });
    $("add-trigger").disabled = locked || !tools.trigger_word || !tools.lacking_trigger;
    find.disabled = replace.disabled = locked;
    $("replace-preview").disabled = locked || !find.value;
    $("replace-apply").disabled = locked || !preview || !preview.changed;
    $("autocaption").disabled = locked || Boolean(tools.autocaption_unavailable) || !state.images.length;
    if (pairsBox) {
      $("add-pair").disabled = locked || state.images.length < 2;
      pairsBox.querySelectorAll(".pair-slot").forEach(slot => { slot.disabled = locked; });
      pairsBox.querySelectorAll(".pair-instruction").forEach(field => { field.readOnly = locked; });
    }
    $("start-training").disabled = locked || !state.can_start;
    $("cancel-training").disabled = !state.can_cancel;
    lockSettings(locked);
  }
  function apply(next) {
    const wasLocked = state.locked;
    state = next;
    $("ws-lock").hidden = !state.locked;
    $("ws-lock-reason").textContent = state.reason;
    const taskLink = $("ws-lock-task");
    taskLink.hidden = !(state.task && state.task.live);
    $("model-status").textContent = state.status;
    if (state.task) {
      taskLink.href = $("task-link").href = state.task.url;
      $("task-link").textContent = `Latest training: ${state.task.status} (${state.task.progress}%)`;
      $("task-link").parentElement.hidden = false;
    }
    $("can-start").textContent = state.can_start ? "yes" : "no";
    $("start-problems").replaceChildren(...state.start_problems.map(text => {
      const problem = document.createElement("div");
      problem.className = "ws-warn";
      problem.textContent = text;
      return problem;
    }));
    $("start-notes").replaceChildren(...state.start_notes.map(text => {
      const note = document.createElement("div");
      note.className = "ws-note";
      note.textContent = text;
      return note;
    }));
    // Captions written elsewhere (the tools, the automatic captioner, someone else) show here, except
    // in the field being edited.
    const known = new Set(cards().map(card => card.dataset.pk));
    let changedElsewhere = state.images.length !== known.size;
    state.images.forEach(image => {
      const card = cardOf(image.pk);
      if (!card) { changedElsewhere = true; return; }
      const caption = card.querySelector(".caption");
      if (document.activeElement !== caption && !caption.dataset.dirty && caption.value !== image.description) {
        caption.value = image.description;
      }
      setFlags(card, image.problems);
      const auto = card.querySelector(".auto");
      auto.hidden = !image.automatic_captioning;
      auto.querySelector(".auto-text").textContent = image.automatic_captioning;
    });
    $("ws-stale").hidden = !changedElsewhere;
    const tools = state.captions;
    $("strategy-note").textContent = tools.strategy_note;
    const lacking = $("lacking-count");
    if (lacking) lacking.textContent = tools.lacking_trigger;
    const progress = $("autocaption-progress");
    if (progress && tools.automatic_count) progress.textContent = `automatic captions: ${tools.automatic_count} of ${state.images.length}`;
    if (autocaptionWaiting && tools.automatic_count >= state.images.length) autocaptionWaiting = false;
    // The pairs as saved, unless one is being edited here.
    const editingPairs = pairsBox && pairsBox.contains(document.activeElement);
    const shownPairs = JSON.stringify(pairs.filter(complete).map(({source_id, target_id, instruction, extra_source_ids}) => ({source_id, target_id, instruction, extra_source_ids})));
    if (pairsBox && !editingPairs && picker.hidden && shownPairs !== JSON.stringify(state.pairs)) {
      pairs = [...state.pairs.map(pair => ({...pair})), ...pairs.filter(pair => !complete(pair))];
      renderPairs();
    }
    if (state.locked) saving("Read-only until the training ends");
    else if (wasLocked) saving("Training over: editing is back");
    render();
  }

  // --- polling ----------------------------------------------------------------------------------------
  let timer = null;
  async function poll(now) {
    clearTimeout(timer);
    try {
      const response = await fetch(ws.dataset.state, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (response.ok) apply(await response.json());
    } catch (error) { /* the next poll tries again */ }
    // Faster while something is changing under the page: a training, or captions on their way.
    timer = setTimeout(poll, state.locked || autocaptionWaiting ? 2000 : 5000);
    return now;
  }
  renderPairs();
  apply(state);
  timer = setTimeout(poll, state.locked ? 2000 : 5000);
})();
