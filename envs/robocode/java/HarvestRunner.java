// Harvest's Robocode runner: one long-lived JVM that runs battles on command and prints one
// JSON line per turn on stdout (everything else Robocode prints goes to stderr).
//
// Commands, one per line on stdin:
//   BATTLE robots=sample.SpinBot,sample.Target rounds=3 seed=7 width=800 height=600
//          [setups=x,y,heading;random] [live=1]
//   ABORT   (ends the running battle; its battle_end says "aborted":true)
//   QUIT
// Replies: {"t":"ready",...} once, then per battle, for each round, {"t":"round_start",...}
// (the robots as placed, turn 0), {"t":"turn",...} lines and {"t":"round_end",...}, and at the
// end {"t":"battle_end",...} or {"t":"error","message":...}. `setups` places robots (pixels,
// heading in degrees; `random` leaves one to Robocode); `live=1` flushes every line at once,
// for a robot that waits on whoever reads them (HarvestBridge).
//
// With HarvestAgent loaded, each turn's line is printed before that turn's robots are woken
// (see the agent); without it, at Robocode's TurnEndedEvent.

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.File;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.awt.geom.Rectangle2D;
import java.lang.reflect.Constructor;
import java.lang.reflect.Method;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import robocode.BattleResults;
import robocode.control.BattleSpecification;
import robocode.control.BattlefieldSpecification;
import robocode.control.RandomFactory;
import robocode.control.RobocodeEngine;
import robocode.control.RobotSetup;
import robocode.control.RobotSpecification;
import robocode.control.events.BattleAdaptor;
import robocode.control.events.BattleCompletedEvent;
import robocode.control.events.BattleErrorEvent;
import robocode.control.events.BattleFinishedEvent;
import robocode.control.events.RoundEndedEvent;
import robocode.control.events.RoundStartedEvent;
import robocode.control.events.TurnEndedEvent;
import robocode.control.snapshot.IBulletSnapshot;
import robocode.control.snapshot.IRobotSnapshot;
import robocode.control.snapshot.ITurnSnapshot;

public final class HarvestRunner {
    static final String SNAPSHOT = "net.sf.robocode.battle.snapshot.TurnSnapshot";

    private static final class Listener extends BattleAdaptor implements HarvestAgent.TurnListener {
        private final PrintStream out;
        private final StringBuilder line = new StringBuilder(1024);
        private boolean live;
        private boolean battleOpen;
        private int lastRound = -1;
        private int lastTurn = -1;
        private Constructor<?> snapshotOf;
        private Method boundingBoxOf;

        Listener(PrintStream out) {
            this.out = out;
        }

        synchronized void startBattle(boolean live) {
            this.live = live;
            battleOpen = true;
            lastRound = -1;
            lastTurn = -1;
        }

        /** The battle's closing line, once: `results` null for an aborted battle. */
        synchronized void endBattle(BattleResults[] results) {
            if (!battleOpen) return;
            battleOpen = false;
            StringBuilder end = new StringBuilder("{\"t\":\"battle_end\"");
            if (results == null) end.append(",\"aborted\":true");
            end.append(",\"results\":[");
            for (int i = 0; results != null && i < results.length; i++) {
                if (i > 0) end.append(',');
                end.append("{\"name\":\"").append(results[i].getTeamLeaderName())
                    .append("\",\"rank\":").append(results[i].getRank())
                    .append(",\"score\":").append(results[i].getScore())
                    .append(",\"firsts\":").append(results[i].getFirsts()).append('}');
            }
            out.println(end.append("]}"));
            out.flush();
        }

        @Override
        public void turnReady(Object battle, List<?> robots, List<?> bullets) {
            // Robocode loads its engine in a class loader of its own: build the snapshot from there.
            try {
                if (snapshotOf == null) {
                    snapshotOf = Class.forName(SNAPSHOT, true, battle.getClass().getClassLoader())
                        .getConstructor(battle.getClass(), List.class, List.class, boolean.class);
                    boundingBoxOf = robots.get(0).getClass().getMethod("getBoundingBox");
                }
                double[] boxes = new double[2 * robots.size()];
                for (int i = 0; i < robots.size(); i++) {
                    Rectangle2D box = (Rectangle2D) boundingBoxOf.invoke(robots.get(i));
                    boxes[2 * i] = box.getX();
                    boxes[2 * i + 1] = box.getY();
                }
                emit((ITurnSnapshot) snapshotOf.newInstance(battle, robots, bullets, false), boxes);
            } catch (ReflectiveOperationException error) {
                throw new IllegalStateException("HarvestRunner: cannot snapshot the battle", error);
            }
        }

        @Override
        public void onRoundStarted(RoundStartedEvent event) {
            emit(event.getStartSnapshot(), null);
        }

        @Override
        public void onTurnEnded(TurnEndedEvent event) {
            emit(event.getTurnSnapshot(), null);
        }

        /**
         * One line per turn: the first snapshot of a (round, turn) wins (the agent's early one).
         * `boxes` (the agent's snapshots only): each robot's bounding box corner, which the radar
         * scans and which Robocode does not move back with a robot that rammed another.
         */
        private synchronized void emit(ITurnSnapshot turn, double[] boxes) {
            if (turn.getRound() == lastRound && turn.getTurn() == lastTurn) return;
            lastRound = turn.getRound();
            lastTurn = turn.getTurn();
            line.setLength(0);
            line.append("{\"t\":\"").append(turn.getTurn() == 0 ? "round_start" : "turn").append("\",\"round\":")
                .append(turn.getRound()).append(",\"turn\":").append(turn.getTurn()).append(",\"robots\":[");
            IRobotSnapshot[] robots = turn.getRobots();
            for (int i = 0; i < robots.length; i++) {
                IRobotSnapshot robot = robots[i];
                if (i > 0) line.append(',');
                line.append("{\"name\":\"").append(robot.getName())
                    .append("\",\"x\":").append(robot.getX())
                    .append(",\"y\":").append(robot.getY())
                    .append(",\"heading\":").append(robot.getBodyHeading())
                    .append(",\"gun_heading\":").append(robot.getGunHeading())
                    .append(",\"radar_heading\":").append(robot.getRadarHeading())
                    .append(",\"velocity\":").append(robot.getVelocity())
                    .append(",\"gun_heat\":").append(robot.getGunHeat())
                    .append(",\"energy\":").append(robot.getEnergy());
                if (boxes != null) {
                    line.append(",\"box_x\":").append(boxes[2 * i]).append(",\"box_y\":").append(boxes[2 * i + 1]);
                }
                line.append(",\"state\":\"").append(robot.getState()).append("\"}");
            }
            line.append("],\"bullets\":[");
            IBulletSnapshot[] bullets = turn.getBullets();
            for (int i = 0; i < bullets.length; i++) {
                IBulletSnapshot bullet = bullets[i];
                if (i > 0) line.append(',');
                line.append("{\"id\":").append(bullet.getBulletId())
                    .append(",\"owner\":").append(bullet.getOwnerIndex())
                    .append(",\"x\":").append(bullet.getX())
                    .append(",\"y\":").append(bullet.getY())
                    .append(",\"heading\":").append(bullet.getHeading())
                    .append(",\"power\":").append(bullet.getPower())
                    .append(",\"state\":\"").append(bullet.getState()).append("\"}");
            }
            line.append("]}");
            out.println(line);
            if (live) out.flush();
        }

        @Override
        public void onRoundEnded(RoundEndedEvent event) {
            out.println("{\"t\":\"round_end\",\"round\":" + event.getRound() + ",\"turns\":" + event.getTurns() + "}");
            out.flush();
        }

        @Override
        public void onBattleFinished(BattleFinishedEvent event) {
            if (event.isAborted()) endBattle(null);
        }

        @Override
        public void onBattleCompleted(BattleCompletedEvent event) {
            endBattle(event.getIndexedResults());
        }

        @Override
        public void onBattleError(BattleErrorEvent event) {
            out.println("{\"t\":\"engine_error\",\"message\":\"" + escape(event.getError()) + "\"}");
            out.flush();
        }
    }

    static String escape(String text) {
        if (text == null) return "";
        StringBuilder escaped = new StringBuilder(text.length() + 16);
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') escaped.append('\\').append(c);
            else if (c == '\n') escaped.append("\\n");
            else if (c < 0x20) escaped.append(String.format("\\u%04x", (int) c));
            else escaped.append(c);
        }
        return escaped.toString();
    }

    static Map<String, String> options(String[] tokens) {
        Map<String, String> options = new HashMap<>();
        for (int i = 1; i < tokens.length; i++) {
            int equals = tokens[i].indexOf('=');
            if (equals > 0) options.put(tokens[i].substring(0, equals), tokens[i].substring(equals + 1));
        }
        return options;
    }

    /**
     * `x,y,heading;random;...` (pixels, degrees) -> one RobotSetup per robot.
     *
     * Robocode 1.9.3.9 passes setups on as text and reads them back keeping only digits and dots
     * (Battle.computeInitialPositions): values must be plain non-negative decimals, so headings
     * are taken modulo 360 and values below 1e-3 (which Java would print as 1.0E-4) become 0.
     */
    static RobotSetup[] setups(String text, int numRobots) {
        String[] parts = text.split(";");
        if (parts.length != numRobots) {
            throw new IllegalArgumentException("setups=" + text + ": expected " + numRobots + " entries, got "
                                               + parts.length);
        }
        RobotSetup[] setups = new RobotSetup[numRobots];
        for (int i = 0; i < numRobots; i++) {
            if (parts[i].equals("random")) {
                setups[i] = new RobotSetup(null, null, null);
                continue;
            }
            String[] values = parts[i].split(",");
            double[] numbers = new double[3];
            for (int j = 0; values.length == 3 && j < 3; j++) numbers[j] = Double.parseDouble(values[j]);
            if (values.length != 3 || !(numbers[0] >= 0 && numbers[1] >= 0 && Double.isFinite(numbers[2]))) {
                throw new IllegalArgumentException("setups=" + text + ": entry " + i
                                                   + " is not x,y,heading (x, y >= 0) or random");
            }
            double heading = ((numbers[2] % 360) + 360) % 360;
            setups[i] = new RobotSetup(plain(numbers[0]), plain(numbers[1]), plain(heading));
        }
        return setups;
    }

    static double plain(double value) {
        return value < 1e-3 ? 0.0 : value;
    }

    static void error(PrintStream out, String message) {
        out.println("{\"t\":\"error\",\"message\":\"" + escape(message) + "\"}");
        out.flush();
    }

    /** Ends the running battle (if any); its battle_end is printed once, whoever ends it. */
    static void abort(RobocodeEngine engine, Listener listener) {
        engine.abortCurrentBattle();
        engine.waitTillBattleOver();
        listener.endBattle(null);
    }

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
                                          false, "UTF-8");
        System.setOut(System.err);  // Robocode and robots print to System.out: keep the protocol stream clean
        RobocodeEngine.setLogMessagesEnabled(false);
        RobocodeEngine engine = new RobocodeEngine(new File(args[0]));
        Listener listener = new Listener(out);
        engine.addBattleListener(listener);
        HarvestAgent.turnListener = listener;
        engine.setVisible(args.length > 1 && args[1].equals("gui"));
        out.println("{\"t\":\"ready\",\"version\":\"" + escape(engine.getVersion()) + "\"}");
        out.flush();
        // The file descriptor itself: Robocode swaps System.in for a stream only it may read.
        BufferedReader in = new BufferedReader(new InputStreamReader(new FileInputStream(FileDescriptor.in), "UTF-8"));
        String command;
        // Battles run on Robocode's own thread, so an ABORT can arrive while one runs.
        while ((command = in.readLine()) != null) {
            String[] tokens = command.trim().split("\\s+");
            if (tokens[0].equals("QUIT")) break;
            if (tokens[0].equals("ABORT")) {
                abort(engine, listener);
                continue;
            }
            if (!tokens[0].equals("BATTLE")) {
                error(out, "unknown command " + tokens[0]);
                continue;
            }
            engine.waitTillBattleOver();
            Map<String, String> options = options(tokens);
            String names = options.getOrDefault("robots", "sample.SpinBot,sample.Target");
            RobotSpecification[] robots = engine.getLocalRepository(names);
            if (robots.length != names.split(",").length) {
                StringBuilder found = new StringBuilder();
                for (RobotSpecification robot : robots) found.append(found.length() > 0 ? "," : "").append(robot.getClassName());
                error(out, "robots " + names + ": only [" + found + "] are installed");
                continue;
            }
            RobotSetup[] setups = null;
            try {
                if (options.containsKey("setups")) setups = setups(options.get("setups"), robots.length);
            } catch (IllegalArgumentException bad) {
                error(out, bad.getMessage());
                continue;
            }
            if (options.containsKey("seed")) RandomFactory.resetDeterministic(Long.parseLong(options.get("seed")));
            BattlefieldSpecification field = new BattlefieldSpecification(
                Integer.parseInt(options.getOrDefault("width", "800")), Integer.parseInt(options.getOrDefault("height", "600")));
            BattleSpecification battle = new BattleSpecification(field, Integer.parseInt(options.getOrDefault("rounds", "3")),
                                                                 450, 0.1, 100, false, robots, setups);
            listener.startBattle(options.getOrDefault("live", "0").equals("1"));
            engine.runBattle(battle, false);
        }
        abort(engine, listener);
        engine.close();
        out.flush();
        System.exit(0);
    }
}
