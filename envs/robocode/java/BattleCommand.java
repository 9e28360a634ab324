// One BATTLE command of the runner's protocol, parsed strictly. The protocol is described in one
// place, envs/robocode/protocol.py (`BattleCommand`, `BATTLE_OPTIONS`); the runner answers every
// command it parsed with a `battle_start` line (`echo`), which the host checks against what it sent.

package harvest.robocode;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import robocode.control.RobotSetup;

final class BattleCommand {
    static final List<String> OPTIONS = List.of("robots", "rounds", "width", "height", "seed", "setups", "live");

    final String[] robots;
    final int rounds;
    final int width;
    final int height;
    /** null: Robocode's random generator is not reset. */
    final Long seed;
    /** null: Robocode places every robot; an entry null: it places that robot. {x, y, heading in degrees}. */
    final double[][] setups;
    final boolean live;

    private BattleCommand(Map<String, String> options) {
        robots = options.get("robots").split(",");
        rounds = integer(options, "rounds", 3);
        width = integer(options, "width", 800);
        height = integer(options, "height", 600);
        seed = options.containsKey("seed") ? Long.valueOf(number(options, "seed")) : null;
        setups = options.containsKey("setups") ? setups(options.get("setups"), robots.length) : null;
        String live = options.getOrDefault("live", "0");
        if (!live.equals("0") && !live.equals("1")) throw new IllegalArgumentException("BATTLE: live=" + live + ": expected 0 or 1");
        this.live = live.equals("1");
    }

    /** `BATTLE key=value ...`; IllegalArgumentException names the option and what was expected. */
    static BattleCommand parse(String line) {
        String[] tokens = line.trim().split("\\s+");
        Map<String, String> options = new LinkedHashMap<>();
        for (int i = 1; i < tokens.length; i++) {
            int equals = tokens[i].indexOf('=');
            if (equals <= 0 || !OPTIONS.contains(tokens[i].substring(0, equals))) {
                throw new IllegalArgumentException("BATTLE: unknown option " + tokens[i] + "; expected key=value, key one of "
                                                   + OPTIONS);
            }
            if (options.put(tokens[i].substring(0, equals), tokens[i].substring(equals + 1)) != null) {
                throw new IllegalArgumentException("BATTLE: " + tokens[i].substring(0, equals) + " is given twice");
            }
        }
        if (!options.containsKey("robots")) throw new IllegalArgumentException("BATTLE: robots=<a,b,...> is missing");
        return new BattleCommand(options);
    }

    private static long number(Map<String, String> options, String key) {
        String text = options.get(key);
        try {
            return Long.parseLong(text);
        } catch (NumberFormatException bad) {
            throw new IllegalArgumentException("BATTLE: " + key + "=" + text + ": expected an integer", bad);
        }
    }

    private static int integer(Map<String, String> options, String key, int fallback) {
        if (!options.containsKey(key)) return fallback;
        long value = number(options, key);
        if (value < 1 || value > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("BATTLE: " + key + "=" + value + ": expected a positive int");
        }
        return (int) value;
    }

    /** `x,y,heading;random;...` (pixels, degrees), one entry per robot. */
    static double[][] setups(String text, int numRobots) {
        String[] parts = text.split(";", -1);
        if (parts.length != numRobots) {
            throw new IllegalArgumentException("BATTLE: setups=" + text + ": expected " + numRobots + " entries, got "
                                               + parts.length);
        }
        double[][] setups = new double[numRobots][];
        for (int i = 0; i < numRobots; i++) {
            if (!parts[i].equals("random")) setups[i] = setup(text, i, parts[i]);
        }
        return setups;
    }

    /** One entry `x,y,heading`: finite numbers, x and y not negative. */
    static double[] setup(String text, int index, String entry) {
        String[] values = entry.split(",", -1);
        double[] numbers = new double[3];
        boolean valid = values.length == 3;
        for (int j = 0; valid && j < 3; j++) {
            try {
                numbers[j] = Double.parseDouble(values[j]);
            } catch (NumberFormatException bad) {
                valid = false;
            }
            valid = valid && Double.isFinite(numbers[j]) && (j == 2 || numbers[j] >= 0);
        }
        if (!valid) {
            throw new IllegalArgumentException("BATTLE: setups=" + text + ": entry " + index
                                               + " is not x,y,heading (finite numbers, x, y >= 0) or random");
        }
        return numbers;
    }

    /**
     * One RobotSetup per robot, or null without setups.
     *
     * Robocode 1.9.3.9 passes setups on as text and reads them back keeping only digits and dots
     * (Battle.computeInitialPositions): values must be plain non-negative decimals, so headings
     * are taken modulo 360 and values below 1e-3 (which Java would print as 1.0E-4) become 0.
     */
    RobotSetup[] robotSetups() {
        if (setups == null) return null;
        RobotSetup[] placed = new RobotSetup[setups.length];
        for (int i = 0; i < setups.length; i++) {
            if (setups[i] == null) {
                placed[i] = new RobotSetup(null, null, null);
                continue;
            }
            double heading = ((setups[i][2] % 360) + 360) % 360;
            placed[i] = new RobotSetup(plain(setups[i][0]), plain(setups[i][1]), plain(heading));
        }
        return placed;
    }

    static double plain(double value) {
        return value < 1e-3 ? 0.0 : value;
    }

    /** The `battle_start` line: this command as parsed, defaults filled in. */
    String echo() {
        StringBuilder line = new StringBuilder("{\"t\":\"battle_start\",\"robots\":[");
        for (int i = 0; i < robots.length; i++) {
            line.append(i > 0 ? "," : "").append('"').append(HarvestRunner.escape(robots[i])).append('"');
        }
        line.append("],\"rounds\":").append(rounds).append(",\"width\":").append(width)
            .append(",\"height\":").append(height).append(",\"seed\":").append(seed).append(",\"setups\":");
        if (setups == null) line.append("null");
        for (int i = 0; setups != null && i < setups.length; i++) {
            line.append(i > 0 ? "," : "[");
            if (setups[i] == null) line.append("null");
            else line.append('[').append(setups[i][0]).append(',').append(setups[i][1]).append(',').append(setups[i][2]).append(']');
        }
        return line.append(setups != null ? "]" : "").append(",\"live\":").append(live).append('}').toString();
    }
}
