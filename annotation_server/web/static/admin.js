// Upload by drag and drop (or a file picker), one request per file with its own progress bar.
// XMLHttpRequest rather than fetch: only it reports upload progress.
"use strict";

(() => {
  const zone = document.getElementById("dropzone");
  if (!zone) return;
  const list = document.getElementById("uploads");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const url = `/api/v1/projects/${zone.dataset.project}/uploads`;

  function upload(file) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = `${file.name} `;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute("aria-label", `upload of ${file.name}`);
    const status = document.createElement("span");
    status.textContent = " waiting";
    row.append(name, bar, status);
    list.append(row);

    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) bar.value = event.loaded / event.total;
        status.textContent = " uploading";
      });
      xhr.addEventListener("load", () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // A proxy error page: the status code below says enough.
        }
        if (xhr.status === 201) {
          bar.value = 1;
          if (!body.duplicate) status.textContent = ` queued as job ${body.job_id}`;
          else if (body.job_id) status.textContent = ` already uploaded before; its processing restarted as job ${body.job_id}`;
          else status.textContent = " already uploaded before";
        } else {
          status.textContent = ` failed: ${typeof body.detail === "string" ? body.detail : `HTTP ${xhr.status}`}`;
          status.className = "error";
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        status.textContent = " failed: the server cannot be reached";
        status.className = "error";
        resolve();
      });
      const form = new FormData();
      form.append("file", file);
      form.append("kind", document.getElementById("kind").value);
      // Unchecked sends nothing: the project's held-out fraction then decides.
      if (document.getElementById("held-out").checked) form.append("held_out", "true");
      xhr.send(form);
    });
  }

  async function uploadAll(files) {
    // One at a time: the server decodes every upload in full, and the bars then fill in order.
    for (const file of files) await upload(file);
  }

  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    uploadAll([...event.dataTransfer.files]);
  });
  document.getElementById("files").addEventListener("change", (event) => {
    uploadAll([...event.target.files]);
    event.target.value = "";
  });
})();
