"""The Streamlit script under `streamlit.testing.v1.AppTest`: chat, attachments, sliders, cache, errors.

The app runs on the toy model when it is built (else on the tiny random model, where only the
mechanics can be checked); the model is loaded once per process through `st.cache_resource`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4", "point": "application/octet-stream",
        "imu": "text/csv"}
FIRST_FOUR = ("image", "audio", "video", "point")


@pytest.fixture
def app(app_config) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]  # e.g. the model failed to load
    return at


def attach(at: AppTest, *paths: Path, text: str = "") -> AppTest:
    chat = at.chat_input[0]
    for path in paths:
        modality = {".png": "image", ".wav": "audio", ".mp3": "audio", ".mp4": "video", ".ply": "point",
                    ".csv": "imu"}[path.suffix]
        chat.upload(path.name, path.read_bytes(), MIME[modality])
    return chat.set_value(text).run()


def history(at: AppTest):
    return at.session_state.history


def has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


def test_status_line_names_the_model_device_and_precision(app, app_config):
    status = app.main.caption[0].value
    assert f"**{app_config}**" in status and "cpu" in status and "float32" in status
    if app_config == "toy":
        assert "Toy world" in app.info[0].value and "official" in app.info[0].value


def test_a_text_question_gets_a_streamed_answer(app):
    app.chat_input[0].set_value("What is this?").run()
    assert not app.exception
    user, answer = history(app)
    assert (user.role, user.text) == ("user", "What is this?")
    assert answer.role == "assistant" and answer.text and answer.error is None
    assert answer.footer().startswith("Text only")
    assert [m.value for m in app.chat_message[1].markdown][0] == answer.text


def test_attachments_are_shown_back_and_condition_the_answer(app, toy_files):
    attach(app, *(toy_files[m] for m in FIRST_FOUR), text="What is this?")
    assert not app.exception and not app.error
    user, answer = history(app)
    assert [a.modality for a in user.attachments] == ["image", "audio", "video", "point"]
    assert len(app.image) >= 2  # the thumbnail in the inputs panel and in the message
    assert app.get("audio") and app.get("video")
    assert app.get("plotly_chart")  # the point cloud's 3D view
    assert answer.mixture == ":material/image: dog_image_0000.png + :material/graphic_eq: dog_audio_0000.wav + :material/movie: dog_video_0000.mp4 + :material/view_in_ar: dog_point_0000.ply"
    assert any(c.value.startswith("Conditioned on :material/image: dog_image_0000.png") for c in app.caption)


def test_follow_up_questions_keep_the_inputs_and_files_alone_ask_a_default_question(app, toy_files):
    attach(app, toy_files["audio"])
    assert history(app)[0].text == "What do you hear?"
    app.chat_input[0].set_value("Are you sure?").run()
    assert [t.text for t in history(app)[::2]] == ["What do you hear?", "Are you sure?"]
    assert history(app)[3].mixture == ":material/graphic_eq: dog_audio_0000.wav"


def test_weight_slider_and_subtract_switch_make_embedding_arithmetic(app, toy_files):
    attach(app, toy_files["image"], toy_files["audio"], text="What is this?")
    image, audio = app.session_state.inputs
    app.slider(key=f"weight_{audio.key}").set_value(0.5).run()
    app.toggle(key=f"subtract_{image.key}").set_value(True).run()
    assert app.expander[0].label == "Inputs · − :material/image: dog_image_0000.png + :material/graphic_eq: dog_audio_0000.wav ×0.5"
    app.chat_input[0].set_value("And now?").run()
    assert not app.exception
    assert history(app)[-1].mixture == "− :material/image: dog_image_0000.png + :material/graphic_eq: dog_audio_0000.wav ×0.5"
    blocks = [a.content_block()["extras"]["weight"] for a in app.session_state.inputs]
    assert blocks == [-1.0, 0.5]
    app.button(key=f"remove_{image.key}").click().run()
    assert [a.name for a in app.session_state.inputs] == ["dog_audio_0000.wav"]


def test_the_toy_answers_each_question_alone_unless_asked_to_remember(app, app_config):
    remembered = app.slider(key="history_messages").value
    assert remembered == (0 if app_config == "toy" else 6)


def test_max_tokens_slider_bounds_the_answer(app):
    app.slider(key="max_tokens").set_value(8).run()
    app.chat_input[0].set_value("Tell me a long story.").run()
    answer = history(app)[-1]
    assert 0 < answer.output_tokens <= 8
    if answer.finish_reason == "length":
        assert "cut at the max tokens setting" in answer.footer()


@pytest.mark.usefixtures("needs_toy")
def test_cache_toggle_shows_or_hides_the_neighbours(app, toy_files):
    app.slider(key="cache_size").set_value(4).run()
    attach(app, toy_files["audio"], text="What do you hear?")
    neighbours = history(app)[-1].neighbors
    assert len(neighbours) == 4 and neighbours == sorted(neighbours, key=lambda n: -n.score)
    assert any(e.label == "Visual cache: 4 neighbours" for e in app.expander)
    app.toggle(key="cache_on").set_value(False).run()
    app.chat_input[0].set_value("And without the cache?").run()
    assert history(app)[-1].neighbors == []


@pytest.mark.usefixtures("needs_toy")
def test_the_toy_model_hears_the_dog(app, toy_files):
    from ibllm_agent.toy import names_concept

    attach(app, toy_files["audio"], text="What do you hear?")
    assert names_concept(history(app)[-1].text, "dog"), history(app)[-1].text


def test_bad_and_too_large_files_show_friendly_errors_and_the_app_keeps_running(app, monkeypatch):
    app.chat_input[0].upload("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png").set_value("And this?").run()
    assert not app.exception
    assert "**broken.png** cannot be used" in app.error[0].value
    assert [t.role for t in history(app)] == ["user", "assistant"] and history(app)[1].error
    app.chat_input[0].upload("big.wav", b"RIFF" + b"\0" * (51 * 2**20), "audio/wav").run()
    assert "**big.wav** is 51.0 MB; files up to 50 MB are accepted." in [e.value for e in app.error]
    app.chat_input[0].set_value("Still there?").run()
    assert not app.exception and history(app)[-1].text


def test_new_chat_clears_history_and_inputs(app, toy_files):
    attach(app, toy_files["image"], text="What is in this picture?")
    app.button(key="new_chat").click().run()
    assert history(app) == [] and app.session_state.inputs == []
    assert not app.chat_message


def test_upload_panel_adds_inputs_to_the_mix(app, toy_files):
    panel = app.file_uploader[0]
    panel.upload(toy_files["image"].name, toy_files["image"].read_bytes(), MIME["image"]).run()
    assert [a.name for a in app.session_state.inputs] == ["dog_image_0000.png"]
    app.file_uploader[0].upload(toy_files["point"].name, toy_files["point"].read_bytes(), MIME["point"]).run()
    assert [a.modality for a in app.session_state.inputs] == ["image", "point"]
    assert app.file_uploader[0].value in (None, [])  # emptied after each upload


def test_depth_thermal_and_imu_are_read_as_chosen_shown_back_and_answered(app, toy_files, app_config):
    for modality in ("depth", "thermal", "imu"):
        path = toy_files[modality]
        app.file_uploader[0].upload(path.name, path.read_bytes(), MIME.get(modality, "image/png")).run()
    inputs = app.session_state.inputs
    # by their content the two PNGs are pictures, the CSV an IMU recording; the user says what the PNGs are
    assert [a.modality for a in inputs] == ["image", "image", "imu"]
    for att, modality in zip(inputs[:2], ("depth", "thermal")):
        app.selectbox(key=f"as_{att.key}").set_value(modality).run()
    assert not app.exception and not app.error
    assert [a.modality for a in app.session_state.inputs] == ["depth", "thermal", "imu"]
    assert len(app.image) >= 2 and app.get("plotly_chart")  # two false-colour maps and the IMU's six lines
    app.chat_input[0].set_value("What is this?").run()
    answer = history(app)[-1]
    assert answer.role == "assistant" and answer.text and answer.error is None
    assert ":material/vibration: dog_imu_0000.csv" in answer.mixture


@pytest.mark.usefixtures("needs_toy")
@pytest.mark.parametrize("modality", ["depth", "thermal", "imu"])
def test_try_a_sense_attaches_a_toy_sample_read_as_that_sense(app, modality):
    app.button(key=f"example_{modality}").click().run()
    user, answer = history(app)
    (item,) = user.attachments
    assert item.modality == modality and user.text == "What is this?" and answer.text


def test_embedding_explorer_shows_similarities_and_zero_shot_labels(app, toy_files, app_config):
    attach(app, toy_files["image"], toy_files["audio"], text="What is this?")
    app.segmented_control(key="view").set_value("explorer").run()
    assert not app.exception and not app.chat_input
    assert app.get("plotly_chart")  # the heatmap
    table = app.dataframe[0].value
    assert list(table["input"]) == ["dog_image_0000.png", "dog_audio_0000.wav", "mixture"]
    assert all(0 < p <= 1 for p in table["probability"]), table
    if app_config == "toy":  # a picture and a sound of a dog, together, are closest to "a dog"
        assert table["label"][2] == "a dog", table


def with_config(monkeypatch, path: Path, **sections) -> AppTest:
    """The app started on a config file with these sections; checked to have started cleanly."""
    import json

    path.write_text(json.dumps(sections))
    monkeypatch.setenv("IBLLM_UI_CONFIG", str(path))
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    return at


@pytest.fixture
def weights(tmp_path) -> Path:
    """The one model folder of `folder_app`."""
    folder = tmp_path / "weights"
    folder.mkdir()
    return folder


@pytest.fixture
def folder_app(tmp_path, monkeypatch, app_config, weights) -> AppTest:
    """The app with `[app] model_folders = [weights]`: paths typed in the sidebar must lie in there."""
    return with_config(monkeypatch, tmp_path / "folders.json", model={"name": app_config},
                       app={"model_folders": [str(weights)]})


def load(at: AppTest, **typed: str) -> AppTest:
    """Type into the Model form's text inputs (by key) and press Load."""
    for key, value in typed.items():
        at.text_input(key=key).set_value(value)
    next(b for b in at.button if b.label == "Load").click().run()
    return at


def test_a_model_that_cannot_load_is_reported_and_the_toy_is_one_click_away(folder_app, weights):
    load(folder_app, model_name=str(weights / "7B.pth"), llama_dir=str(weights / "llama"))
    assert not folder_app.exception  # no traceback outside debug
    assert f"Could not load **{weights.resolve() / '7B.pth'}**" in folder_app.error[0].value
    folder_app.button(key="back_to_toy").click().run()
    assert folder_app.session_state.spec.name == "toy"


def test_without_model_folders_the_sidebar_takes_no_paths(app, app_config):
    """The configured model, read-only, and the toy: nothing a visitor types reaches the disk."""
    assert [t.key for t in app.text_input] == ["draw_prompt"]  # the Draw button's prompt; no path anywhere
    choice = app.selectbox(key="model_choice")
    assert choice.options == (["toy (built in)"] if app_config == "toy" else [f"{app_config} (configured)",
                                                                              "toy (built in)"])
    assert any("`[app] model_folders`" in c.value for c in app.sidebar.caption)


def test_paths_outside_the_model_folders_are_refused_alike_whether_they_exist_or_not(folder_app, weights):
    spec = folder_app.session_state.spec
    refusal = f"that path is outside the model folders ({weights.resolve()}); nothing was loaded."
    inside = str(weights / "7B.pth")  # a real model's name: the toy would not use a LLaMA folder or ImageBind
    for key, label, name in [("model_name", "Model", spec.name), ("llama_dir", "LLaMA folder", inside),
                             ("imagebind_ckpt", "ImageBind checkpoint", inside), ("cache_index", "Cache index", ""),
                             ("unclip_dir", "Stable unCLIP folder", "")]:
        for outside in ("/etc/hostname", "/nowhere/7B.pth", "../../../etc/hostname", "/etc", f"{weights}2/x"):
            load(folder_app, **{"model_name": name or spec.name, key: outside})
            assert not folder_app.exception
            assert [e.value for e in folder_app.error] == [f"{label}: {refusal}"], (key, outside)
            assert folder_app.session_state.spec == spec  # nothing loaded, nothing looked up
        folder_app.text_input(key=key).set_value("" if key != "model_name" else spec.name)


def test_a_symlink_in_a_model_folder_that_points_outside_is_refused(folder_app, weights, tmp_path):
    outside = tmp_path / "secret.pth"
    outside.write_bytes(b"not for visitors")
    (weights / "link.pth").symlink_to(outside)
    (weights / "dir").symlink_to(tmp_path)
    spec = folder_app.session_state.spec
    for typed in (str(weights / "link.pth"), "link.pth", str(weights / "dir" / "secret.pth")):
        load(folder_app, model_name=typed)
        assert not folder_app.exception
        assert [e.value for e in folder_app.error] == [
            f"Model: that path is outside the model folders ({weights.resolve()}); nothing was loaded."]
        assert folder_app.session_state.spec == spec


def test_debug_shows_the_traceback_under_the_friendly_error(tmp_path, monkeypatch, app_config, weights):
    from streamlit import config

    before = config.get_option("client.showErrorDetails")
    config.set_option("client.showErrorDetails", "none")  # as ui/.streamlit/config.toml has it
    try:
        at = with_config(monkeypatch, tmp_path / "debug.json", model={"name": app_config},
                         app={"model_folders": [str(weights)], "debug": True})
        load(at, model_name="7B.pth", llama_dir="llama")  # relative: inside the first model folder
        assert f"Could not load **{weights.resolve() / '7B.pth'}**" in at.error[0].value
        assert "7B.pth" in at.exception[0].message and at.exception[0].stack_trace
        assert config.get_option("client.showErrorDetails") == "full"  # Streamlit's own error boxes too
    finally:
        config.set_option("client.showErrorDetails", before)


@pytest.mark.slow
def test_with_a_server_url_the_app_asks_the_server_and_loads_nothing(tmp_path, monkeypatch, toy_files, needs_toy):
    """IBLLM_SERVER_URL points the app at an `ibllm serve`: the same answers, drawings and explorer, no local
    model."""
    from langchain_core.messages import HumanMessage

    from ibllm_agent import ChatImageBindLLM, factory
    from ibllm_agent.serve.process import ServerProcess

    with ServerProcess(["--model", "toy", "--visual-cache"]) as server:
        monkeypatch.setenv("IBLLM_SERVER_URL", server.url)
        monkeypatch.delenv("IBLLM_UI_CONFIG", raising=False)
        monkeypatch.setattr(factory, "load", lambda *a, **k: pytest.fail("server mode loaded a model"))
        at = AppTest.from_file(APP, default_timeout=300).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert f"served by {server.url}" in at.main.caption[0].value and "Toy world" in at.info[0].value
        attach(at, toy_files["audio"], text="What is this?")
        answer = history(at)[-1]
        assert not at.exception and answer.error is None and answer.neighbors
        at.button(key="draw_1").click().run()  # the server draws (/v1/images/generations)
        drawn = history(at)[-1]
        assert not at.exception and drawn.error is None and drawn.image[:4] == b"\x89PNG"
        assert "toy-decoder" in drawn.footer()
        monkeypatch.undo()
        block = {"type": "audio", "url": str(toy_files["audio"]), "extras": {"weight": 1.0}}
        local = ChatImageBindLLM(model="toy", visual_cache_index="default", temperature=0, max_tokens=64)
        assert answer.text == local.invoke([HumanMessage([{"type": "text", "text": "What is this?"}, block])]).content
        at.segmented_control(key="view").set_value("explorer").run()
        assert not at.exception and at.dataframe


def test_two_sessions_share_one_model_and_answer_concurrently(tmp_path, monkeypatch, app_config):
    """Two browser sessions: one load for both, and concurrent answers on that one model equal to answers given
    one at a time (greedy). Streamlit's AppTest is not thread-safe (two running at once race inside its widget
    registry), so the sessions run in turn and the concurrency is driven on the app's model through its backend."""
    import json
    import threading

    from langchain_core.messages import HumanMessage

    import ibllm_agent
    from ui import backend
    from ui.settings import AppConfig

    # a spec no other test uses, so this test sees the shared cache's first load
    config = tmp_path / "fresh.json"
    config.write_text(json.dumps({"model": {"name": app_config, "dtype": "float32"}}))
    monkeypatch.setenv("IBLLM_UI_CONFIG", str(config))
    loads = []
    real_load = ibllm_agent.load
    monkeypatch.setattr(ibllm_agent, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    questions = ["What is this?", "Describe the sound of rain."]
    alone = [history(AppTest.from_file(APP, default_timeout=300).run().chat_input[0].set_value(q).run())[-1].text
             for q in questions]
    assert len(loads) == 1 and all(alone)

    config = AppConfig.from_file(config)
    model = backend.load_model(config.model)  # what the app's shared_model holds, for two threads at once
    chat = backend.chat_model(model, config.generation, config.visual_cache)
    together = [None] * len(questions)

    def ask(i):
        together[i] = "".join(c.content for c in chat.stream([HumanMessage(questions[i])]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


@pytest.mark.usefixtures("needs_toy")
def test_try_a_sound_attaches_a_fresh_toy_sample_and_answers(app):
    from ibllm_agent.toy import CONCEPT_NAMES, find_concepts

    app.button(key="example_audio").click().run()
    user, answer = history(app)
    (sound,) = user.attachments
    assert sound.modality == "audio" and user.text == "What do you hear?"
    assert Path(sound.name).stem in CONCEPT_NAMES  # named after its (random) concept
    assert find_concepts(answer.text), answer.text  # which one it hears is the eval's business, not the UI's
    assert "example_audio" not in [b.key for b in app.button]  # the welcome buttons are gone


def test_cache_neighbours_show_image_thumbnails_and_scores(toy_files):
    def page(path):
        from ibllm_agent.cache.base import Neighbor
        from ui import views

        views.neighbors([Neighbor("a", 0.91, 0.6, {"uri": path, "caption": "a dog"}), Neighbor("17", 0.52, 0.4)])

    at = AppTest.from_function(page, args=(str(toy_files["image"]),)).run()
    assert not at.exception
    assert at.expander[0].label == "Visual cache: 2 neighbours"
    assert len(at.image) == 1  # only the item whose uri is an image file
    assert [m.value for m in at.markdown] == ["**a dog**", "**cache item 17**"]
    assert [c.value for c in at.caption] == ["similarity 0.910 · weight 60%", "similarity 0.520 · weight 40%"]


def test_toy_cache_neighbours_show_the_training_picture_again():
    """Toy cache items name a training picture (world seed, concept, index): the app renders it again."""
    def page():
        import ibllm_agent
        from ibllm_agent.cache.base import Neighbor
        from ui import views

        cache = ibllm_agent.load("toy", knn=True).visual_cache
        hit = cache.search(cache.get_vectors(40, 41), 1)  # cache item 40 is found as itself
        views.neighbors([Neighbor(hit.ids[0][0], 1.0, 0.7, hit.metadatas[0][0]),
                         Neighbor("x", 0.5, 0.3, {"modality": "image", "seed": 0, "index": 1, "concept": "unicorn"})])

    at = AppTest.from_function(page).run(timeout=60)
    assert not at.exception
    assert len(at.image) == 1  # the toy item; the unknown concept gets no picture
    assert [m.value for m in at.markdown] == ["**a photo of a dog.**", "**unicorn**"]


def test_the_model_form_switches_precision_and_the_status_line_follows(app, app_config):
    app.selectbox(key="model_choice").set_value(app_config)
    app.selectbox(key="dtype").set_value("bfloat16")
    next(b for b in app.button if b.label == "Load").click().run()
    assert not app.exception and not app.error
    assert app.session_state.spec.dtype == "bfloat16"
    assert "bfloat16" in app.main.caption[0].value
    app.chat_input[0].set_value("What is this?").run()
    assert history(app)[-1].text


@pytest.mark.usefixtures("needs_toy")
def test_draw_button_puts_a_picture_of_the_inputs_in_the_chat(app, toy_files):
    attach(app, toy_files["audio"], text="What do you hear?")
    assert not has_button(app, "draw_0")  # a question has no Draw button; its answer (turn 1) has
    app.button(key="draw_1").click().run()
    assert not app.exception and not app.error
    drawn = history(app)[-1]
    assert drawn.role == "assistant" and drawn.image[:4] == b"\x89PNG" and drawn.error is None
    assert drawn.footer().startswith("Drawn from :material/graphic_eq: dog_audio_0000.wav · toy-decoder")
    assert any(c.value.startswith("Drawn from") for c in app.caption)
    assert not has_button(app, "draw_2")  # a picture has no Draw button of its own
    app.chat_input[0].set_value("And now?").run()  # the picture stays out of the text history sent
    assert not app.exception and history(app)[-1].text


@pytest.mark.usefixtures("needs_toy")
def test_draw_offers_only_the_current_inputs_and_reports_a_mix_with_nothing_to_draw(app, toy_files):
    attach(app, toy_files["image"], toy_files["audio"], text="What is this?")
    assert has_button(app, "draw_1")
    image, audio = app.session_state.inputs
    app.slider(key=f"weight_{audio.key}").set_value(0.5).run()
    app.toggle(key=f"subtract_{image.key}").set_value(True).run()
    assert not has_button(app, "draw_1")  # that answer was about other inputs: Draw draws the current ones
    app.chat_input[0].set_value("And now?").run()
    app.button(key="draw_3").click().run()  # -1 + 0.5: the reference divides by a negative sum
    assert not app.exception
    assert "sum to" in history(app)[-1].error and history(app)[-1].image is None
